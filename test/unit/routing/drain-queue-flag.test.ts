/**
 * The kill switch of kv-aware's drained queue: `kvsync gateway --drain-queue false` (or
 * KVSYNC_DRAIN_QUEUE=false) parses to drainQueue false, on by default; with it off the policy
 * scores the raw in-prefill sum even once a stream has a learned rate.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { register } from "../../../src/commands/gateway.ts";
import { KvAwarePolicy } from "../../../src/routing/kv-aware.ts";
import { LoadTracker } from "../../../src/routing/load.ts";

function parseGateway(argv: string[], env: Record<string, string> = {}): Record<string, unknown> {
  const saved = new Map(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const program = new Command("kvsync").exitOverride().configureOutput({ writeErr: () => {} });
    register(program);
    const gw = program.commands.find((c) => c.name() === "gateway");
    assert.ok(gw);
    let seen: Record<string, unknown> = {};
    gw.action((o: Record<string, unknown>) => {
      seen = o;
    });
    program.parse(["gateway", ...argv], { from: "user" });
    return seen;
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test("--drain-queue: on by default, off with the flag or its env twin", () => {
  assert.equal(parseGateway([]).drainQueue, true);
  assert.equal(parseGateway(["--drain-queue", "false"]).drainQueue, false);
  assert.equal(parseGateway([], { KVSYNC_DRAIN_QUEUE: "false" }).drainQueue, false);
  assert.equal(parseGateway(["--drain-queue"], { KVSYNC_DRAIN_QUEUE: "false" }).drainQueue, true);
});

test("drainQueue false: kv-aware counts every queued token although the stream has a rate", () => {
  let now = 0;
  const loads = new LoadTracker(null, { now: () => now });
  // one request teaches pod-a's rate: 1000 tokens in 100 ms
  const t = loads.begin("pod-a", 1000);
  now = 100;
  t.prefillDone();
  t.done();
  assert.equal(loads.prefillRate("pod-a"), 10);
  // a 5000-token prefill sent at t=100, looked at 400 ms later: 1000 tokens left at the rate
  loads.begin("pod-a", 5000);
  now = 500;
  const index = { match: () => [] };
  const cands = [{ streamId: "pod-a", pod: "pod-a", rank: null, http: "http://a", live: true }];
  const req = {
    ns: { model: "m", lora: null, blockSize: 16 },
    tokenIds: new Array(33).fill(1),
    candidates: cands,
  };
  const on = new KvAwarePolicy(index, loads).route(req).ranked[0];
  const off = new KvAwarePolicy(index, loads, { drainQueue: false }).route(req).ranked[0];
  assert.equal(on.terms?.queued, 1000);
  assert.equal(off.terms?.queued, 5000);
});
