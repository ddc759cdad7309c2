/**
 * The simulator on a live replay's terms (src/eval/live.ts): the arrivals the client actually
 * sent, each request's overhead outside the engine model measured on the live placement, and how
 * long after its last modelled token it really ended, so what differs from the live figures is
 * the model's routing, cache and engine, not the machine's timing.
 */
import { createPolicy } from "../routing/index.ts";
import { seededRandom } from "../util/rng.ts";
import {
  type EvalPolicy,
  type FleetOptions,
  type PolicyFactory,
  type PolicyResult,
  simulate,
  simulateDetailed,
} from "./simulator.ts";
import type { TraceRequest } from "./workload.ts";

/** `reqs` with the arrival times a live replay actually sent them at (LiveResult.sentAtMs). */
export function sentArrivals(reqs: readonly TraceRequest[], sentAtMs: readonly number[]): TraceRequest[] {
  const t0 = reqs.length > 0 ? reqs[0].timestamp : 0;
  const out = reqs.map((r, i) => ({ ...r, timestamp: t0 + (sentAtMs[i] ?? r.timestamp - t0) }));
  // sends are sequential, so the order holds; sort anyway for a caller's hand-made times
  return out.sort((a, b) => a.timestamp - b.timestamp);
}

/**
 * A policy that sends request i where the live replay sent it (`pods[i]`, a candidate's pod
 * name; a request without an answer goes where round-robin sends it): the model's engines on the
 * live placement, so a request's modelled TTFT has the same neighbours as its live one.
 */
export function placedAs(pods: ReadonlyArray<string | null>): PolicyFactory {
  return ({ index, loads }) => {
    const rr = createPolicy("round-robin", { index, loads });
    let i = 0;
    return {
      name: rr.name,
      route(req) {
        const d = rr.route(req);
        const want = pods[i++] ?? null;
        const k = want === null ? -1 : d.ranked.findIndex((c) => c.candidate.pod === want);
        if (k <= 0) return d;
        const ranked = d.ranked.slice();
        const [c] = ranked.splice(k, 1);
        ranked.unshift(c);
        return { ...d, ranked };
      },
    };
  };
}

/**
 * What a live replay spent outside the engine model, per request: live TTFT minus the simulator's
 * TTFT for the same request and arrivals with no overhead. Measured on the replay itself (not on
 * idle probes), so it carries the machine's load at the time and its spread: on a loaded machine
 * a few requests wait 100+ ms in event loops while the median waits 20. With `pods` (the live
 * placement) the zero-overhead run places every request where the live one did (placedAs), so a
 * request's overhead is not mixed with the queueing of a different placement: without it, a
 * request the policy would place elsewhere in the model gets the difference between two pods'
 * queues counted as overhead, and that error feeds kv-aware's in-flight counts in simulateAsLive.
 */
export function requestOverheads(
  reqs: readonly TraceRequest[],
  policy: EvalPolicy,
  fleet: FleetOptions,
  sentAtMs: readonly number[],
  ttftMs: ReadonlyArray<number | null>,
  latencyMs: ReadonlyArray<number | null> = [],
  pods?: ReadonlyArray<string | null>,
): { median: number; perRequest: number[]; endDelay: number[] } {
  const d = simulateDetailed(
    sentArrivals(reqs, sentAtMs),
    policy,
    { ...fleet, overheadMs: 0 },
    pods === undefined ? undefined : { custom: placedAs(pods) },
  );
  const raw = d.requests.map((r, i) => {
    const l = ttftMs[i];
    return l === null || l === undefined || r.rejected ? null : Math.max(0, l - (r.firstTokenAt - r.arrival));
  });
  const known = raw.filter((x): x is number => x !== null).sort((a, b) => a - b);
  const median = known.length > 0 ? known[known.length >> 1] : 0;
  const perRequest = raw.map((x) => x ?? median);
  const endDelay = d.requests.map((r, i) => {
    const l = latencyMs[i];
    const half = perRequest[i] / 2;
    return l === null || l === undefined || r.rejected
      ? half
      : Math.max(half, l - (r.finishedAt - r.arrival) - half);
  });
  return { median, perRequest, endDelay };
}

/** What simulateAsLive takes from a live replay (LiveResult's timing fields). */
export interface LiveTiming {
  /** when each request was sent, ms after the first */
  sentAtMs: readonly number[];
  /** median of requestOverheadMs */
  overheadMs: number;
  requestOverheadMs: readonly number[];
  requestEndDelayMs: readonly number[];
}

/**
 * Replays of one live run that simulateAsLive averages. kv-aware's choices hinge on in-flight
 * counts, so moving the arrivals by under a millisecond (less than the client's send time is
 * known to: the gateway sees a request 5-100 ms after it) moves the simulated hit rate of a
 * 200-request slice by 1.8 % (standard deviation over 20 such replays of one live run); the
 * prediction is the mean over replays within that uncertainty, not one draw of it.
 */
export const AS_LIVE_REPLAYS = 16;
/** the arrival uncertainty of those replays, ms either way */
const JITTER_MS = 1;

/**
 * The simulator on a live replay's terms: the arrivals the client actually sent and each
 * request's measured overhead, so what differs from the live figures is the model's routing,
 * cache and engine, not the machine's timing. `replays` > 1 averages that many replays whose
 * arrivals (but the first) move by up to JITTER_MS (seeded, order kept): hit rate, TTFT
 * percentiles, busiest/mean and requests per pod are means; the rest is the unmoved replay's.
 */
export function simulateAsLive(
  reqs: readonly TraceRequest[],
  policy: EvalPolicy,
  fleet: FleetOptions,
  live: LiveTiming,
  replays = AS_LIVE_REPLAYS,
): PolicyResult {
  const run = (sentAtMs: readonly number[]) =>
    simulate(
      sentArrivals(reqs, sentAtMs),
      policy,
      { ...fleet, overheadMs: live.overheadMs },
      { requestOverheadMs: live.requestOverheadMs, requestEndDelayMs: live.requestEndDelayMs },
    );
  const base = run(live.sentAtMs);
  if (replays <= 1) return base;
  const rnd = seededRandom(fleet.seed);
  const out = { ...base, requestsPerPod: base.requestsPerPod.slice() };
  const keys = [
    "hitRate",
    "predictedHitRate",
    "ttftP50Ms",
    "ttftP90Ms",
    "ttftP99Ms",
    "ttftMeanMs",
    "maxMeanLoad",
  ] as const;
  for (let k = 1; k < replays; k++) {
    const moved = live.sentAtMs.map((t, i) => (i === 0 ? t : t + (2 * rnd() - 1) * JITTER_MS));
    for (let i = 1; i < moved.length; i++) moved[i] = Math.max(moved[i], moved[i - 1]);
    const r = run(moved);
    for (const key of keys) out[key] += r[key];
    for (let p = 0; p < out.requestsPerPod.length; p++) out.requestsPerPod[p] += r.requestsPerPod[p];
  }
  for (const key of keys) out[key] /= replays;
  for (let p = 0; p < out.requestsPerPod.length; p++) out.requestsPerPod[p] /= replays;
  return out;
}
