/**
 * The Mooncake conversation trace (every request starts with the same 512-token block) replayed
 * by the evaluator (src/eval/): the real policies over the real index, fed by the modelled
 * engines' KV events, on 4 engines with an LRU prefix cache.
 *
 * kv-aware must not pile the hot prefix onto one pod (a pure longest-match router does, and its
 * queue explodes), must reuse more cache than round-robin, and must give better TTFT.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  FLEET_DEFAULTS,
  type FleetOptions,
  type PolicyResult,
  simulate,
} from "../../../src/eval/simulator.ts";
import { loadMooncake } from "../../../src/eval/workload.ts";
import type { NamespaceRef, StreamMatch } from "../../../src/index/types.ts";
import type { RouteRequest, RoutingDecision, RoutingPolicy } from "../../../src/routing/index.ts";

const TRACE = loadMooncake(
  fileURLToPath(new URL("../../fixtures/traces/mooncake_conversation_2000.jsonl", import.meta.url)),
  1200,
);

const FLEET: FleetOptions = {
  ...FLEET_DEFAULTS,
  pods: 4,
  cacheBlocks: 3000, // per pod (~1.5M tokens)
  blockTokens: 512,
  eventLagMs: 20,
  prefillMsPerToken: 0.05,
  stepMs: 5,
};

/** Pure cache affinity: the longest match wins, ties to the first pod (what naive routers do). */
class LongestMatchPolicy implements RoutingPolicy {
  readonly name = "kv-aware" as const;
  constructor(private readonly index: { match(ns: NamespaceRef, t: ArrayLike<number>): StreamMatch[] }) {}
  route(req: RouteRequest): RoutingDecision {
    const m = new Map(this.index.match(req.ns, req.tokenIds).map((x) => [x.streamId, x.matchedBlocks]));
    const ranked = req.candidates
      .map((candidate) => ({
        candidate,
        matchedBlocks: m.get(candidate.streamId) ?? 0,
        matchedTokens: 0,
        tiers: { GPU: 0, CPU: 0, STORAGE: 0 },
        savedTokens: 0,
        load: {
          inflightRequests: 0,
          inflightPrefillRequests: 0,
          inflightPrefillTokens: 0,
          engineWaiting: null,
          engineRunning: null,
          kvUsage: null,
        },
        score: -(m.get(candidate.streamId) ?? 0),
      }))
      .sort((a, b) => a.score - b.score);
    return { policy: this.name, ranked };
  }
}

test("Mooncake conversation trace: kv-aware spreads the hot prefix and beats round-robin", (t) => {
  assert.ok(
    TRACE.every((r) => r.hash_ids[0] === 0),
    "premise: every request starts with block 0",
  );
  const naive = simulate(TRACE, "kv-aware", FLEET, ({ index }) => new LongestMatchPolicy(index));
  const kv = simulate(TRACE, "kv-aware", FLEET);
  const rr = simulate(TRACE, "round-robin", FLEET);
  const lr = simulate(TRACE, "least-request", FLEET);
  const share = (r: PolicyResult) => Math.max(...r.requestsPerPod) / TRACE.length;
  const fmt = (r: PolicyResult) =>
    `pods=${r.requestsPerPod.join("/")} hit=${(r.hitRate * 100).toFixed(1)}% ttft p50=${r.ttftP50Ms.toFixed(0)}ms p90=${r.ttftP90Ms.toFixed(0)}ms`;
  const report = `\n longest-match ${fmt(naive)}\n kv-aware      ${fmt(kv)}\n round-robin   ${fmt(rr)}\n least-request ${fmt(lr)}`;

  // the premise: pure cache affinity piles (nearly) everything onto one pod
  t.diagnostic(report);
  assert.ok(share(naive) > 0.9, `longest-match should monopolise: ${report}`);
  assert.ok(naive.ttftP90Ms > 10 * kv.ttftP90Ms, report);
  // kv-aware spreads the load ...
  assert.ok(share(kv) < 0.4, `kv-aware piled onto one pod: ${report}`);
  assert.ok(Math.min(...kv.requestsPerPod) / TRACE.length > 0.1, `a pod starved: ${report}`);
  // ... while reusing more cache and answering faster than the cache-blind policies
  assert.ok(kv.hitRate > rr.hitRate + 0.02, report);
  assert.ok(kv.hitRate > lr.hitRate + 0.02, report);
  assert.ok(kv.ttftP50Ms < rr.ttftP50Ms, report);
  assert.ok(kv.ttftP90Ms <= rr.ttftP90Ms, report);
});
