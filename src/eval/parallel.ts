/**
 * evaluate() with its policies simulated in parallel worker threads (piscina): each policy's run
 * is independent (a fresh fleet, index and load tracker), so the results are the same as
 * evaluate()'s, in the time of the longest run when there are cores for all of them.
 */
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { buildWorkload, type EvalResult, evaluate, summarizeEval, type WorkloadSpec } from "./run.ts";
import type { SimTask } from "./sim-worker.ts";
import type { EvalPolicy, FleetOptions, PolicyResult } from "./simulator.ts";

const WORKER_FILE = fileURLToPath(
  new URL(import.meta.url.endsWith(".ts") ? "./sim-worker.ts" : "./sim-worker.js", import.meta.url),
);
/** from .ts sources the threads load the worker through tsx (as src/tokenize/pool.ts does) */
const WORKER_EXEC_ARGV = import.meta.url.endsWith(".ts")
  ? ["--import", import.meta.resolve("tsx")]
  : undefined;

/** slowest first, so the longest run starts at once (kv-aware applies every KV event) */
const COST_ORDER: readonly EvalPolicy[] = [
  "kv-aware",
  "prefix-approx",
  "oracle",
  "least-request",
  "round-robin",
  "random",
];

/** Threads for `n` policies: one per policy, at most the machine's cores. */
export function defaultThreads(n: number): number {
  return Math.max(1, Math.min(n, availableParallelism()));
}

export async function evaluateParallel(
  w: WorkloadSpec,
  fleet: FleetOptions,
  policies: readonly EvalPolicy[],
  threads = defaultThreads(policies.length),
  onResult?: (r: PolicyResult) => void,
): Promise<EvalResult> {
  if (threads <= 1 || policies.length <= 1) return evaluate(w, fleet, policies, onResult);
  const t0 = performance.now();
  const pool = new Piscina<SimTask, PolicyResult>({
    filename: WORKER_FILE,
    minThreads: 0,
    maxThreads: threads,
    idleTimeout: 1000,
    ...(WORKER_EXEC_ARGV !== undefined ? { execArgv: WORKER_EXEC_ARGV } : {}),
  });
  try {
    const order = [...policies].sort((a, b) => COST_ORDER.indexOf(a) - COST_ORDER.indexOf(b));
    const done = new Map<EvalPolicy, PolicyResult>();
    const runs = order.map(async (policy) => {
      const r = await pool.run({ workload: w, fleet, policy });
      done.set(policy, r);
      onResult?.(r);
    });
    // the bound and the workload's figures are computed here while the threads simulate
    const { reqs } = buildWorkload(w, fleet.blockTokens);
    await Promise.all(runs);
    const out: Record<string, PolicyResult> = {};
    for (const p of policies) out[p] = done.get(p) as PolicyResult;
    return summarizeEval(w, fleet, out, t0, reqs);
  } finally {
    await pool.destroy();
  }
}
