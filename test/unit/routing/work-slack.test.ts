/**
 * kv-aware's work slack (src/routing/work-slack.ts): among candidates within `workSlack` of the
 * best estimate, the one adding the least prefill work goes first. Hand-computed scenarios, and
 * the gateway flag with its env twin (0 turns it off).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { register } from "../../../src/commands/gateway.ts";
import type { StreamMatch } from "../../../src/index/types.ts";
import { KV_AWARE_DEFAULTS, KvAwarePolicy } from "../../../src/routing/kv-aware.ts";
import { LoadTracker } from "../../../src/routing/load.ts";
import type { Candidate, LoadView, ScoredCandidate } from "../../../src/routing/types.ts";
import { preferLeastWork } from "../../../src/routing/work-slack.ts";

const IDLE: LoadView = {
  inflightRequests: 0,
  inflightPrefillRequests: 0,
  inflightPrefillTokens: 0,
  engineWaiting: null,
  engineRunning: null,
  kvUsage: null,
};

function scored(name: string, score: number, savedTokens: number): ScoredCandidate {
  const candidate: Candidate = { streamId: name, pod: name, rank: null, http: `http://${name}`, live: true };
  return {
    candidate,
    matchedBlocks: 0,
    matchedTokens: 0,
    tiers: { GPU: 0, CPU: 0, STORAGE: 0 },
    savedTokens,
    load: IDLE,
    score,
  };
}

test("preferLeastWork: the least work within the slack goes first, the rest keep their order", () => {
  // prompt of 100 tokens: work = 100 - saved; limit = 100 * 1.2 = 120
  const r = [scored("a", 100, 0), scored("b", 110, 50), scored("c", 115, 90), scored("d", 130, 100)];
  const out = preferLeastWork(r, 100, 0.2);
  assert.equal(out, r, "in place");
  assert.deepEqual(
    out.map((s) => s.candidate.pod),
    ["c", "a", "b", "d"],
  );
  // d adds no work but is 30 % slower than the best: outside a 0.2 slack, inside 0.3
  const r2 = [scored("a", 100, 0), scored("b", 110, 50), scored("c", 115, 90), scored("d", 130, 100)];
  assert.equal(preferLeastWork(r2, 100, 0.3)[0].candidate.pod, "d");
  // 0 (or less): greedy, untouched
  const r3 = [scored("a", 100, 0), scored("b", 101, 100)];
  assert.deepEqual(
    preferLeastWork(r3, 100, 0).map((s) => s.candidate.pod),
    ["a", "b"],
  );
  // equal work: the better score stays first
  const r4 = [scored("a", 100, 40), scored("b", 105, 40)];
  assert.equal(preferLeastWork(r4, 100, 0.2)[0].candidate.pod, "a");
});

/**
 * pod-a holds 2 of the prompt's blocks (16 tokens each, 33-token prompt: 32 reusable) but is still
 * prefilling 38 tokens this gateway sent; pod-b is idle and holds nothing. With the running-request
 * cost at 0: pod-a = 38 queued + 1 uncached + 1 = 40, pod-b = 0 + 33 + 1 = 34. Greedy takes pod-b
 * (recomputing 33 tokens); pod-a is 40 / 34 = 1.18x the best and adds 1 token of work, so a 0.2
 * slack takes pod-a and a 0.1 slack does not.
 */
test("kv-aware: a busy pod holding the prefix wins within the slack, not beyond it", () => {
  const loads = new LoadTracker(null, { now: () => 0 });
  loads.begin("pod-a", 38);
  const match: StreamMatch = {
    streamId: "pod-a",
    pod: "pod-a",
    rank: null,
    matchedBlocks: 2,
    tiers: { GPU: 2, CPU: 0, STORAGE: 0 },
  };
  const index = { match: () => [match] };
  const candidates: Candidate[] = ["pod-a", "pod-b"].map((p) => ({
    streamId: p,
    pod: p,
    rank: null,
    http: `http://${p}`,
    live: true,
  }));
  const req = { ns: { model: "m", lora: null, blockSize: 16 }, tokenIds: new Array(33).fill(7), candidates };
  const route = (workSlack: number) =>
    new KvAwarePolicy(index, loads, { runningRequestCost: 0, workSlack }).route(req).ranked;

  const greedy = route(0);
  assert.deepEqual(
    greedy.map((s) => [s.candidate.pod, s.score]),
    [
      ["pod-b", 34],
      ["pod-a", 40],
    ],
  );
  assert.deepEqual(
    route(0.2).map((s) => s.candidate.pod),
    ["pod-a", "pod-b"],
  );
  assert.equal(route(0.1)[0].candidate.pod, "pod-b");
  assert.equal(KV_AWARE_DEFAULTS.workSlack, 0.2);
  assert.equal(
    new KvAwarePolicy(index, loads, { runningRequestCost: 0 }).route(req).ranked[0].candidate.pod,
    "pod-a",
  );
});

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

test("--work-slack: 0.2 by default, 0 (greedy) with the flag or its env twin", () => {
  assert.equal(parseGateway([]).workSlack, 0.2);
  assert.equal(parseGateway(["--work-slack", "0"]).workSlack, 0);
  assert.equal(parseGateway([], { KVSYNC_WORK_SLACK: "0" }).workSlack, 0);
  assert.equal(parseGateway(["--work-slack", "0.3"], { KVSYNC_WORK_SLACK: "0" }).workSlack, 0.3);
  assert.throws(() => parseGateway(["--work-slack", "x"]));
});
