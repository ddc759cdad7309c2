import assert from "node:assert/strict";
import { describe, it } from "node:test";
import * as zmq from "zeromq";
import { ZMQ_MAX_SOCKETS } from "../../../src/protocol/zmq-context.ts";

// A gateway following ~1,000 engines holds a SUB per stream plus a DEALER per replay: past
// libzmq's default of 1,023 sockets per context a replay's socket failed with EMFILE and the
// process crashed (found by bench/scale.bench.ts at 1,000 pods).
describe("zmq context socket limit", () => {
  it("is raised at import, before the first socket: 1,500 sockets open in one process", () => {
    assert.ok(ZMQ_MAX_SOCKETS >= 65_000, `${ZMQ_MAX_SOCKETS}`);
    assert.equal(zmq.context.maxSockets, ZMQ_MAX_SOCKETS);
    const sockets: zmq.Dealer[] = [];
    try {
      for (let i = 0; i < 1_500; i++) sockets.push(new zmq.Dealer({ linger: 0 }));
      assert.equal(sockets.length, 1_500);
    } finally {
      for (const s of sockets) s.close();
    }
  });
});
