import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeLoad, encodeJson, parseEnvelope } from "../../../src/cluster/messages.ts";
import { RemoteLoads } from "../../../src/cluster/remote-load.ts";

const hb = (id: string, seq: number, streams: Array<[string, number, number, number]>) =>
  ({ t: "hb", id, seq, streams }) as const;
const d = (id: string, seq: number, s: string, r: number, pr: number, pt: number) =>
  ({ t: "d", id, seq, s, r, pr, pt }) as const;

describe("RemoteLoads: the other replicas' load", () => {
  it("sums heartbeats and deltas over peers, per stream", () => {
    const rl = new RemoteLoads();
    rl.apply(hb("a", 0, [["p0", 2, 1, 100]]), 0);
    rl.apply(
      hb("b", 0, [
        ["p0", 1, 1, 50],
        ["p1", 3, 0, 0],
      ]),
      0,
    );
    assert.deepEqual(rl.remoteLoad("p0"), { requests: 3, prefillRequests: 2, prefillTokens: 150 });
    assert.deepEqual(rl.remoteLoad("p1"), { requests: 3, prefillRequests: 0, prefillTokens: 0 });
    assert.equal(rl.apply(d("a", 1, "p0", 1, 1, 30), 10), "ok");
    assert.deepEqual(rl.remoteLoad("p0"), { requests: 4, prefillRequests: 3, prefillTokens: 180 });
    // first byte, then the end
    rl.apply(d("a", 2, "p0", 0, -1, -30), 20);
    rl.apply(d("a", 3, "p0", -1, 0, 0), 30);
    assert.deepEqual(rl.remoteLoad("p0"), { requests: 3, prefillRequests: 2, prefillTokens: 150 });
    assert.equal(rl.totalRequests(), 6);
  });

  it("a heartbeat replaces the peer's figures (lost deltas are corrected)", () => {
    const rl = new RemoteLoads();
    rl.apply(hb("a", 0, [["p0", 5, 5, 500]]), 0);
    assert.equal(rl.apply(d("a", 3, "p0", 1, 1, 10), 1), "gap");
    rl.apply(hb("a", 4, [["p0", 1, 0, 0]]), 2);
    assert.deepEqual(rl.remoteLoad("p0"), { requests: 1, prefillRequests: 0, prefillTokens: 0 });
    rl.apply(hb("a", 5, []), 3);
    assert.equal(rl.remoteLoad("p0"), undefined);
  });

  it("deltas never take a figure below zero; old seqs are ignored", () => {
    const rl = new RemoteLoads();
    rl.apply(d("a", 0, "p0", -3, -1, -10), 0);
    assert.equal(rl.remoteLoad("p0"), undefined);
    rl.apply(d("a", 1, "p0", 2, 0, 0), 0);
    assert.equal(rl.apply(d("a", 1, "p0", 2, 0, 0), 0), "stale");
    assert.equal(rl.remoteLoad("p0")?.requests, 2);
  });

  it("a silent peer expires with its load; bye removes it at once", () => {
    const rl = new RemoteLoads({ peerTimeoutMs: 1000 });
    rl.apply(hb("a", 0, [["p0", 2, 0, 0]]), 0);
    rl.apply(hb("b", 0, [["p0", 1, 0, 0]]), 0);
    rl.apply(hb("b", 1, [["p0", 1, 0, 0]]), 900);
    assert.deepEqual(rl.expire(1500), ["a"]);
    assert.equal(rl.remoteLoad("p0")?.requests, 1);
    rl.apply({ t: "bye", id: "b", seq: 2 }, 1600);
    assert.equal(rl.remoteLoad("p0"), undefined);
    assert.equal(rl.peerCount(), 0);
  });

  it("bounds peers and streams per peer", () => {
    const rl = new RemoteLoads({ maxPeers: 2, maxStreamsPerPeer: 2 });
    rl.apply(hb("a", 0, []), 0);
    rl.apply(hb("b", 0, []), 0);
    assert.equal(rl.apply(hb("c", 0, [["p0", 1, 0, 0]]), 0), "peer_cap");
    assert.equal(rl.remoteLoad("p0"), undefined);
    assert.equal(
      rl.apply(
        hb("a", 1, [
          ["p0", 1, 0, 0],
          ["p1", 1, 0, 0],
          ["p2", 1, 0, 0],
        ]),
        0,
      ),
      "stream_cap",
    );
    assert.equal(rl.remoteLoad("p2"), undefined);
    assert.equal(rl.apply(d("a", 2, "p3", 1, 0, 0), 0), "stream_cap");
  });
});

describe("cluster messages: bad and foreign input is rejected with a reason", () => {
  const parse = (x: unknown) => {
    const env = parseEnvelope(typeof x === "string" ? Buffer.from(x) : encodeJson(x), "c1", 1024);
    return env.ok ? decodeLoad(env.msg, 10) : env;
  };
  const reason = (x: unknown) => {
    const r = parse(x);
    return r.ok ? "ok" : r.reason;
  };
  it("accepts the three message types", () => {
    assert.equal(reason({ v: 1, c: "c1", t: "hb", id: "a", seq: 0, streams: [["p", 1, 0, 0]] }), "ok");
    assert.equal(reason({ v: 1, c: "c1", t: "d", id: "a", seq: 1, s: "p", r: -1, pr: 0, pt: 0 }), "ok");
    assert.equal(reason({ v: 1, c: "c1", t: "bye", id: "a", seq: 2 }), "ok");
  });
  it("a delta's send time (ts) is kept when given, left out when not a number", () => {
    const d = (ts: unknown) => {
      const r = parse({ v: 1, c: "c1", t: "d", id: "a", seq: 1, s: "p", r: 1, pr: 0, pt: 0, ts });
      assert.ok(r.ok && r.msg.t === "d");
      return r.msg.ts;
    };
    assert.equal(d(1_796_698_248_888.5), 1_796_698_248_888.5);
    assert.equal(d("soon"), undefined);
    assert.equal(d(undefined), undefined);
  });
  it("rejects garbage, other versions, other clusters and bad fields", () => {
    assert.equal(reason("\u0000\u0001garbage"), "malformed");
    assert.equal(reason("[1,2]"), "malformed");
    assert.equal(reason("x".repeat(2000)), "malformed");
    assert.equal(reason({ v: 2, c: "c1", t: "bye", id: "a", seq: 0 }), "version");
    assert.equal(reason({ v: 1, c: "other", t: "bye", id: "a", seq: 0 }), "foreign");
    assert.equal(reason({ v: 1, c: "c1", t: "hb", id: "a", seq: 0, streams: [["p", -1, 0, 0]] }), "invalid");
    assert.equal(
      reason({ v: 1, c: "c1", t: "hb", id: "a", seq: 0, streams: Array(11).fill(["p", 1, 0, 0]) }),
      "invalid",
    );
    assert.equal(reason({ v: 1, c: "c1", t: "d", id: "a", seq: 0, s: "p", r: 0.5, pr: 0, pt: 0 }), "invalid");
    assert.equal(reason({ v: 1, c: "c1", t: "d", id: "", seq: 0, s: "p", r: 0, pr: 0, pt: 0 }), "invalid");
    assert.equal(reason({ v: 1, c: "c1", t: "zz", id: "a", seq: 0 }), "invalid");
    assert.equal(reason({ v: 1, c: "c1", t: "bye", id: "a", seq: -1 }), "invalid");
  });
});
