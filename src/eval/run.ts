/**
 * One evaluation: a workload (a Mooncake trace or a generator), arrival times rescaled or replaced,
 * every policy simulated on a fresh fleet, plus the infinite-cache bound; optionally a sweep of
 * loads for the charts. The JSON shape is an interface (scripts depend on it): `requests`,
 * `infiniteCacheHitRate` and `policies.<name>.{hitRate, ttftP50Ms, ttftP90Ms, ttftP99Ms, maxMeanLoad}`.
 */
import {
  EVAL_POLICIES,
  type EvalPolicy,
  type FleetOptions,
  infiniteCacheHitRate,
  type PolicyResult,
  simulate,
} from "./simulator.ts";
import {
  loadMooncake,
  MOONCAKE_BLOCK_TOKENS,
  MULTI_TURN_DEFAULTS,
  meanRate,
  multiTurnWorkload,
  SHARED_PREFIX_DEFAULTS,
  scaleBlocks,
  sharedPrefixWorkload,
  type TraceRequest,
  withArrivals,
} from "./workload.ts";

export const WORKLOAD_KINDS = ["trace", "shared-prefix", "multi-turn"] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

export interface WorkloadSpec {
  kind: WorkloadKind;
  /** Mooncake JSONL (kind "trace") */
  trace?: string;
  /** first n requests of a trace; requests to generate */
  requests?: number;
  seed: number;
  /** multiply arrival times (0.5 = twice the load) */
  timeScale?: number;
  /** replace arrivals by Poisson at this many requests per second */
  rate?: number;
}

export interface EvalResult {
  workload: { kind: WorkloadKind; source: string; requests: number; ratePerSecond: number; spanMs: number };
  fleet: FleetOptions;
  requests: number;
  infiniteCacheHitRate: number;
  policies: Record<string, PolicyResult>;
  wallMs: number;
}

/** The workload's name in reports: the trace file, or the generator. */
export function sourceOf(w: WorkloadSpec): string {
  return w.kind === "trace" ? String(w.trace) : `generator:${w.kind}`;
}

export function buildWorkload(
  w: WorkloadSpec,
  blockTokens: number,
): { reqs: TraceRequest[]; source: string } {
  let base: TraceRequest[];
  if (w.kind === "trace") {
    if (w.trace === undefined) throw new Error("--trace <file> is required for a trace workload");
    // the trace's blocks are 512 tokens; other --block-tokens replay the same blocks at that size
    base = scaleBlocks(loadMooncake(w.trace, w.requests), MOONCAKE_BLOCK_TOKENS, blockTokens);
  } else if (w.kind === "shared-prefix") {
    base = sharedPrefixWorkload({
      ...SHARED_PREFIX_DEFAULTS,
      seed: w.seed,
      requests: w.requests ?? 4000,
      blockTokens,
    });
  } else {
    base = multiTurnWorkload({
      ...MULTI_TURN_DEFAULTS,
      seed: w.seed,
      requests: w.requests ?? 4000,
      blockTokens,
    });
  }
  return {
    reqs: withArrivals(base, { timeScale: w.timeScale, rate: w.rate, seed: w.seed }),
    source: sourceOf(w),
  };
}

export function evaluate(
  w: WorkloadSpec,
  fleet: FleetOptions,
  policies: readonly EvalPolicy[] = EVAL_POLICIES,
  onResult?: (r: PolicyResult) => void,
): EvalResult {
  const t0 = performance.now();
  const { reqs } = buildWorkload(w, fleet.blockTokens);
  const out: Record<string, PolicyResult> = {};
  for (const p of policies) {
    out[p] = simulate(reqs, p, fleet);
    onResult?.(out[p]);
  }
  return summarizeEval(w, fleet, out, t0, reqs);
}

/** An EvalResult around per-policy results (the workload is rebuilt unless given). */
export function summarizeEval(
  w: WorkloadSpec,
  fleet: FleetOptions,
  policies: Record<string, PolicyResult>,
  t0: number,
  built?: TraceRequest[],
): EvalResult {
  const reqs = built ?? buildWorkload(w, fleet.blockTokens).reqs;
  return {
    workload: {
      kind: w.kind,
      source: sourceOf(w),
      requests: reqs.length,
      ratePerSecond: meanRate(reqs),
      spanMs: reqs.length > 0 ? reqs[reqs.length - 1].timestamp - reqs[0].timestamp : 0,
    },
    fleet,
    requests: reqs.length,
    infiniteCacheHitRate: infiniteCacheHitRate(reqs, fleet.blockTokens),
    policies,
    wallMs: performance.now() - t0,
  };
}

export interface SweepPoint {
  /** load relative to the workload's own arrival rate (2 = twice as many requests per second) */
  load: number;
  ratePerSecond: number;
  infiniteCacheHitRate: number;
  policies: Record<string, Pick<PolicyResult, "hitRate" | "ttftP90Ms" | "maxMeanLoad" | "utilization">>;
}

/** The same workload at several loads (arrival times divided by the load factor). */
export function sweep(
  w: WorkloadSpec,
  fleet: FleetOptions,
  policies: readonly EvalPolicy[],
  loads: readonly number[],
): SweepPoint[] {
  return loads.map((load) => {
    const r = evaluate({ ...w, timeScale: (w.timeScale ?? 1) / load }, fleet, policies);
    const ps: SweepPoint["policies"] = {};
    for (const [k, v] of Object.entries(r.policies)) {
      ps[k] = {
        hitRate: v.hitRate,
        ttftP90Ms: v.ttftP90Ms,
        maxMeanLoad: v.maxMeanLoad,
        utilization: v.utilization,
      };
    }
    return {
      load,
      ratePerSecond: r.workload.ratePerSecond,
      infiniteCacheHitRate: r.infiniteCacheHitRate,
      policies: ps,
    };
  });
}
