/**
 * evaluateParallel: the policies simulated in worker threads give exactly evaluate()'s results
 * (each run is independent and deterministic), in the caller's policy order.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { evaluateParallel } from "../../../src/eval/parallel.ts";
import { evaluate, type WorkloadSpec } from "../../../src/eval/run.ts";
import { FLEET_DEFAULTS, type PolicyResult } from "../../../src/eval/simulator.ts";

const strip = ({ wallMs: _, ...r }: PolicyResult) => r;

test("evaluateParallel in 2 threads equals evaluate on a trace slice and a generator", async () => {
  const fleet = { ...FLEET_DEFAULTS, pods: 4, cacheBlocks: 400 };
  const policies = ["round-robin", "kv-aware", "oracle"] as const;
  const specs: WorkloadSpec[] = [
    { kind: "trace", trace: "test/fixtures/traces/mooncake_synthetic_1000.jsonl", requests: 300, seed: 1 },
    { kind: "multi-turn", requests: 300, seed: 2 },
  ];
  for (const w of specs) {
    const seen: string[] = [];
    const par = await evaluateParallel(w, fleet, policies, 2, (r) => seen.push(r.policy));
    const seq = evaluate(w, fleet, policies);
    assert.deepEqual(Object.keys(par.policies), [...policies]);
    assert.deepEqual([...seen].sort(), [...policies].sort());
    for (const p of policies) assert.deepEqual(strip(par.policies[p]), strip(seq.policies[p]), p);
    assert.equal(par.infiniteCacheHitRate, seq.infiniteCacheHitRate);
    assert.deepEqual(par.workload, seq.workload);
    assert.ok(par.policies["kv-aware"].hitRate > 0);
  }
});
