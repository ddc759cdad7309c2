import assert from "node:assert/strict";
import { test } from "node:test";
import { offsetEndpoint } from "../../../src/engine/publisher.ts";
import { dataParallelEndpoint as rankEndpoint } from "../../../src/protocol/endpoints.ts";
import { dataParallelEndpoint } from "../../../src/protocol/index.ts";

test("dataParallelEndpoint: vLLM's rank r = port + r; ipc/inproc suffixed; null when not derivable", () => {
  assert.equal(dataParallelEndpoint("tcp://10.0.0.5:5557", 0), "tcp://10.0.0.5:5557");
  assert.equal(dataParallelEndpoint("tcp://10.0.0.5:5557", 2), "tcp://10.0.0.5:5559");
  assert.equal(dataParallelEndpoint("tcp://[::1]:5558", 1), "tcp://[::1]:5559");
  assert.equal(dataParallelEndpoint("ipc:///tmp/kv", 1), "ipc:///tmp/kv_dp1");
  assert.equal(dataParallelEndpoint("inproc://kv", 3), "inproc://kv_dp3");
  assert.equal(dataParallelEndpoint("tcp://127.0.0.1:*", 1), null);
  assert.equal(dataParallelEndpoint("tcp://h:65535", 1), null);
  assert.equal(dataParallelEndpoint("tcp://h:65534", 1), "tcp://h:65535");
});

test("the publisher and the subscriber side derive the same rank endpoints", () => {
  for (const e of ["tcp://*:5557", "tcp://10.1.2.3:6000", "ipc:///run/kv", "inproc://x"]) {
    for (let r = 0; r < 4; r++) {
      const sub = rankEndpoint(e.replace("*", "127.0.0.1"), r);
      assert.equal(sub, offsetEndpoint(e, r).replace("*", "127.0.0.1"));
    }
  }
  // an ephemeral publisher port: every rank binds its own "*"; a subscriber cannot derive it
  assert.equal(offsetEndpoint("tcp://127.0.0.1:*", 2), "tcp://127.0.0.1:*");
  assert.equal(rankEndpoint("tcp://127.0.0.1:*", 2), null);
});
