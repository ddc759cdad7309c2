/**
 * A piscina task handler: one policy of an evaluation simulated in a worker thread (parallel.ts).
 * The workload is rebuilt from its spec here (a trace is parsed once per thread and kept), so a
 * task carries a few fields, not 12,000 requests.
 */
import { buildWorkload, type WorkloadSpec } from "./run.ts";
import { type EvalPolicy, type FleetOptions, type PolicyResult, simulate } from "./simulator.ts";
import type { TraceRequest } from "./workload.ts";

export interface SimTask {
  workload: WorkloadSpec;
  fleet: FleetOptions;
  policy: EvalPolicy;
}

let cached: { key: string; reqs: TraceRequest[] } | null = null;

export default function run(t: SimTask): PolicyResult {
  const key = JSON.stringify([t.workload, t.fleet.blockTokens]);
  if (cached === null || cached.key !== key)
    cached = { key, reqs: buildWorkload(t.workload, t.fleet.blockTokens).reqs };
  return simulate(cached.reqs, t.policy, t.fleet);
}
