/**
 * The evaluator's discrete-event simulator: a workload replayed against modelled engines
 * (engine-model.ts), routed by the real policies of src/routing/ reading the real sync index
 * (src/index/), which is fed only by the KV events the modelled engines emit, `eventLagMs` after
 * the step that produced them. Loads come from the gateway's own LoadTracker, claimed at dispatch,
 * released at the first token (prefill part) and at the finish, as the gateway does.
 *
 * Trace blocks become token blocks: block `id` is `blockTokens` token ids derived from `id`, so
 * the index hashes, chains and matches real token ids of the prompt's real length.
 */
import { createIndex } from "../index/index.ts";
import type { NamespaceRef, PrefixIndex, StreamRef } from "../index/types.ts";
import { blockRemoved, blockStored } from "../protocol/build.ts";
import { hashFromInt } from "../protocol/hash.ts";
import type { BlockRemoved, BlockStored, KvEvent } from "../protocol/types.ts";
import { type Candidate, createPolicy, LoadTracker, type RoutingPolicy } from "../routing/index.ts";
import type { KvAwareOptions } from "../routing/kv-aware.ts";
import type { LoadTicket } from "../routing/load.ts";
import { percentileSorted } from "../util/stats.ts";
import {
  ENGINE_MODEL_DEFAULTS,
  EngineModel,
  type EngineModelOptions,
  type SimRequest,
} from "./engine-model.ts";
import { EventHeap } from "./heap.ts";
import { OraclePolicy } from "./oracle.ts";
import type { TraceRequest } from "./workload.ts";

export const EVAL_POLICIES = [
  "kv-aware",
  "least-request",
  "round-robin",
  "random",
  "prefix-approx",
  "oracle",
] as const;
export type EvalPolicy = (typeof EVAL_POLICIES)[number];

export interface FleetOptions {
  pods: number;
  cacheBlocks: number;
  blockTokens: number;
  eventLagMs: number;
  maxRunning: number;
  tokenBudget: number;
  stepMs: number;
  prefillMsPerToken: number;
  decodeMsPerSeq: number;
  seed: number;
  /**
   * Request overhead outside the engine (client → gateway → engine, and the first byte back), ms:
   * the engine admits a request half of it after dispatch, and its first byte reaches the gateway
   * (load release, learned prefill rate) and the client half of it after the engine's first token.
   */
  overheadMs: number;
  /** kv-aware knobs (defaults: the gateway's) */
  kvAware?: Partial<KvAwareOptions>;
}

export const FLEET_DEFAULTS: FleetOptions = {
  pods: 8,
  cacheBlocks: 2000,
  blockTokens: 512,
  eventLagMs: 50,
  maxRunning: ENGINE_MODEL_DEFAULTS.maxRunning,
  tokenBudget: ENGINE_MODEL_DEFAULTS.tokenBudget,
  stepMs: ENGINE_MODEL_DEFAULTS.timing.stepMs,
  prefillMsPerToken: ENGINE_MODEL_DEFAULTS.timing.prefillMsPerToken,
  decodeMsPerSeq: ENGINE_MODEL_DEFAULTS.timing.decodeMsPerSeq,
  seed: 1,
  overheadMs: 0,
};

export interface PolicyResult {
  policy: string;
  requests: number;
  rejected: number;
  /** leading prompt blocks cached on the chosen pod at admission / prompt blocks */
  hitRate: number;
  ttftP50Ms: number;
  ttftP90Ms: number;
  ttftP99Ms: number;
  ttftMeanMs: number;
  /** busiest pod's requests over the mean */
  maxMeanLoad: number;
  requestsPerPod: number[];
  /** blocks the policy expected to hit (its chosen candidate's match) / prompt blocks */
  predictedHitRate: number;
  evictions: number;
  /** share of simulated time the engines spent in steps (mean over pods) */
  utilization: number;
  eventsApplied: number;
  simulatedMs: number;
  wallMs: number;
}

/**
 * The token ids of workload block `id`: `blockTokens` copies of one id per block (distinct blocks
 * give distinct token runs, so distinct chain keys; the index hashes every token all the same).
 */
export function blockToken(id: number): number {
  return id % 2_000_000_000;
}

/** The prompt of a trace request as token ids (the partial last block too). */
export function promptTokens(r: TraceRequest, blockTokens: number, buf?: Int32Array): Int32Array {
  const out =
    buf !== undefined && buf.length >= r.input_length
      ? buf.subarray(0, r.input_length)
      : new Int32Array(r.input_length);
  const ids = r.hash_ids;
  for (let b = 0, i = 0; i < out.length; b++, i += blockTokens) {
    // a trace may list fewer ids than blocks: the rest is unique to the request
    const tok = b < ids.length ? blockToken(ids[b]) : 2_000_000_001 + b;
    out.fill(tok, i, Math.min(out.length, i + blockTokens));
  }
  return out;
}

export function toSimRequest(r: TraceRequest, id: number, blockTokens: number): SimRequest {
  const full = Math.min(r.hash_ids.length, Math.floor(r.input_length / blockTokens));
  return {
    id,
    arrival: r.timestamp,
    inputLength: r.input_length,
    outputLength: Math.max(1, r.output_length),
    hashIds: r.hash_ids,
    fullBlocks: full,
    reusableBlocks: Math.min(full, Math.floor((r.input_length - 1) / blockTokens)),
    hitBlocks: 0,
    firstTokenAt: -1,
    finishedAt: -1,
    rejected: false,
  };
}

/**
 * The infinite-cache bound: per request, the leading blocks (that an engine could reuse) some
 * earlier request held, over all prompt blocks.
 */
export function infiniteCacheHitRate(reqs: readonly TraceRequest[], blockTokens: number): number {
  const seen = new Set<number>();
  let hit = 0;
  let total = 0;
  for (let i = 0; i < reqs.length; i++) {
    const s = toSimRequest(reqs[i], i, blockTokens);
    let n = 0;
    while (n < s.reusableBlocks && seen.has(s.hashIds[n])) n++;
    hit += n;
    total += s.hashIds.length;
    for (let b = 0; b < s.fullBlocks; b++) seen.add(s.hashIds[b]);
  }
  return total > 0 ? hit / total : 0;
}

const EV_ARRIVAL = 0;
const EV_STEP = 1;
const EV_DELIVER = 2;
/** a dispatched request reaches its engine (a = request, b = pod) */
const EV_SUBMIT = 3;
/** the first byte (b = 0) or the end (b = 1) of request a reaches the gateway */
const EV_REPLY = 4;

/** A policy built by the caller (tests compare against routers that are not gateway policies). */
export type PolicyFactory = (deps: { index: PrefixIndex; loads: LoadTracker }) => RoutingPolicy;

/** Per-run inputs that are not fleet settings. */
export interface SimulateOptions {
  /** a policy built by the caller instead of `policyName`'s */
  custom?: PolicyFactory;
  /**
   * request i's overhead outside the engine (ms, split as `FleetOptions.overheadMs` is), in place of
   * the fleet's constant: a live replay's measured per-request overhead (src/eval/live.ts)
   */
  requestOverheadMs?: readonly number[];
  /**
   * request i's delay from the engine's last token to the gateway seeing the end (ms), in place of
   * half its overhead: a live replay's measured stretch of the decode and stream (live.ts), which
   * keeps the request in the gateway's in-flight count as long as it was live
   */
  requestEndDelayMs?: readonly number[];
}

/** Replay `reqs` (sorted by timestamp) through `policy` on a fresh fleet. */
export function simulate(
  reqs: readonly TraceRequest[],
  policyName: EvalPolicy,
  f: FleetOptions,
  custom?: PolicyFactory | SimulateOptions,
): PolicyResult {
  return simulateDetailed(reqs, policyName, f, custom).result;
}

/** simulate(), also returning every request's outcome (arrival, hit blocks, first token, finish). */
export function simulateDetailed(
  reqs: readonly TraceRequest[],
  policyName: EvalPolicy,
  f: FleetOptions,
  options?: PolicyFactory | SimulateOptions,
): { result: PolicyResult; requests: SimRequest[]; index: PrefixIndex } {
  const wall0 = performance.now();
  const so: SimulateOptions = typeof options === "function" ? { custom: options } : (options ?? {});
  const custom = so.custom;
  const bs = f.blockTokens;
  const ns: NamespaceRef = { model: "trace", lora: null, blockSize: bs };
  const index: PrefixIndex = createIndex();
  let now = 0;
  const loads = new LoadTracker(null, { now: () => now });
  const heap = new EventHeap();
  const sim = reqs.map((r, i) => toSimRequest(r, i, bs));
  const tickets: Array<LoadTicket | null> = new Array(sim.length).fill(null);
  let eventsApplied = 0;
  const pending: Array<{ ref: StreamRef; events: KvEvent[] } | undefined> = [];

  const refs: StreamRef[] = [];
  const engines: EngineModel[] = [];
  const fleetHalf = Math.max(0, f.overheadMs ?? 0) / 2;
  const perRequest = so.requestOverheadMs;
  const endDelays = so.requestEndDelayMs;
  const halfOf = (id: number): number =>
    perRequest === undefined ? fleetHalf : Math.max(0, perRequest[id] ?? 2 * fleetHalf) / 2;
  const eo: EngineModelOptions = {
    cacheBlocks: f.cacheBlocks,
    blockTokens: bs,
    maxRunning: f.maxRunning,
    tokenBudget: f.tokenBudget,
    timing: { stepMs: f.stepMs, prefillMsPerToken: f.prefillMsPerToken, decodeMsPerSeq: f.decodeMsPerSeq },
  };
  // only kv-aware reads the index: the others skip applying events (same results, less time)
  const feedIndex = policyName === "kv-aware" || custom !== undefined;
  const deliver = (ref: StreamRef, events: KvEvent[], t: number) => {
    index.applyBatch(ref, { ts: t / 1000, events, dpRank: null });
    eventsApplied += events.length;
  };
  for (let p = 0; p < f.pods; p++) {
    const ref: StreamRef = { streamId: `pod-${p}`, pod: `pod-${p}`, rank: null, model: ns.model };
    refs.push(ref);
    engines.push(
      new EngineModel(ref.pod, eo, {
        onFirstToken: (r, t) => {
          const half = halfOf(r.id);
          if (half > 0) heap.push(t + half, EV_REPLY, r.id, 0);
          else tickets[r.id]?.prefillDone();
        },
        onFinish: (r, t) => {
          // never before the first byte's reply: the gateway sees the end after the start
          const half = Math.max(halfOf(r.id), endDelays?.[r.id] ?? 0);
          if (half > 0) heap.push(t + half, EV_REPLY, r.id, 1);
          else {
            tickets[r.id]?.done();
            tickets[r.id] = null;
          }
        },
        onEvents: (ev, t) => {
          if (!feedIndex) return;
          // removals happened when the step was planned, stores when it ended
          const events: KvEvent[] = [];
          if (ev.removed.length > 0) events.push(removedEvent(ev.removed));
          for (const s of ev.stored) events.push(storedEvent(s.ids, s.parent, bs));
          if (f.eventLagMs <= 0) deliver(ref, events, t);
          else {
            pending.push({ ref, events });
            heap.push(t + f.eventLagMs, EV_DELIVER, pending.length - 1, 0);
          }
        },
      }),
    );
  }
  const candidates: Candidate[] = refs.map((r) => ({
    streamId: r.streamId,
    pod: r.pod,
    rank: null,
    http: "sim://",
    live: true,
  }));
  const podIndex = new Map(refs.map((r, i) => [r.streamId, i]));
  const policy: RoutingPolicy | OraclePolicy =
    custom !== undefined
      ? custom({ index, loads })
      : policyName === "oracle"
        ? new OraclePolicy(engines, eo, () => now)
        : createPolicy(policyName, {
            index,
            loads,
            seed: f.seed,
            kvAware: f.kvAware,
            prefixApprox: { now: () => now, blockSize: bs },
          });

  const schedule = (p: number, t: number | null) => {
    if (t !== null) heap.push(t, EV_STEP, p, engines[p].epoch);
  };
  let predictedBlocks = 0;
  // one prompt buffer for the whole run: policies read the tokens only while routing
  const buf = new Int32Array(reqs.reduce((m, r) => Math.max(m, r.input_length), 1));
  for (let i = 0; i < sim.length; i++) heap.push(sim[i].arrival, EV_ARRIVAL, i, 0);
  while (heap.size > 0) {
    heap.pop();
    now = heap.t;
    const a = heap.a;
    if (heap.kind === EV_ARRIVAL) {
      const r = sim[a];
      let p: number;
      let saved: number;
      if (policy instanceof OraclePolicy) {
        const c = policy.choose(r);
        p = c.pod;
        saved = c.savedTokens;
        predictedBlocks += c.matchedBlocks;
      } else {
        const rr = { ns, tokenIds: promptTokens(reqs[a], bs, buf), candidates };
        const d = policy.route(rr);
        const top = d.ranked[0];
        policy.onDispatched?.(rr, top);
        p = podIndex.get(top.candidate.streamId) as number;
        saved = top.savedTokens;
        predictedBlocks += top.matchedBlocks;
      }
      tickets[a] = loads.begin(refs[p].streamId, r.inputLength - saved);
      const half = halfOf(a);
      if (half > 0) heap.push(now + half, EV_SUBMIT, a, p);
      else schedule(p, engines[p].submit(r, now));
    } else if (heap.kind === EV_SUBMIT) {
      schedule(heap.b, engines[heap.b].submit(sim[a], now));
    } else if (heap.kind === EV_REPLY) {
      if (heap.b === 0) tickets[a]?.prefillDone();
      else {
        tickets[a]?.done();
        tickets[a] = null;
      }
    } else if (heap.kind === EV_STEP) {
      const e = engines[a];
      if (heap.b !== e.epoch) continue; // replaced by an earlier step end
      schedule(a, e.stepEnd(now));
    } else {
      const b = pending[a] as { ref: StreamRef; events: KvEvent[] };
      pending[a] = undefined;
      deliver(b.ref, b.events, now);
    }
  }
  const result = summarize(
    policyName,
    sim,
    engines,
    predictedBlocks,
    eventsApplied,
    now,
    performance.now() - wall0,
    (id) => 2 * halfOf(id),
  );
  return { result, requests: sim, index };
}

function summarize(
  policy: string,
  sim: SimRequest[],
  engines: EngineModel[],
  predictedBlocks: number,
  eventsApplied: number,
  simulatedMs: number,
  wallMs: number,
  overheadMs: (id: number) => number,
): PolicyResult {
  let hit = 0;
  let blocks = 0;
  let rejected = 0;
  const ttft: number[] = [];
  for (const r of sim) {
    blocks += r.hashIds.length;
    if (r.rejected) {
      rejected++;
      continue;
    }
    hit += r.hitBlocks;
    ttft.push(r.firstTokenAt - r.arrival + overheadMs(r.id));
  }
  ttft.sort((x, y) => x - y);
  const perPod = engines.map((e) => e.served);
  const mean = sim.length / Math.max(1, engines.length);
  return {
    policy,
    requests: sim.length,
    rejected,
    hitRate: blocks > 0 ? hit / blocks : 0,
    ttftP50Ms: percentileSorted(ttft, 0.5),
    ttftP90Ms: percentileSorted(ttft, 0.9),
    ttftP99Ms: percentileSorted(ttft, 0.99),
    ttftMeanMs: ttft.length > 0 ? ttft.reduce((x, y) => x + y, 0) / ttft.length : Number.NaN,
    maxMeanLoad: mean > 0 ? Math.max(...perPod) / mean : 0,
    requestsPerPod: perPod,
    predictedHitRate: blocks > 0 ? predictedBlocks / blocks : 0,
    evictions: engines.reduce((x, e) => x + e.evictions, 0),
    utilization:
      simulatedMs > 0 ? engines.reduce((x, e) => x + e.busyMs, 0) / (engines.length * simulatedMs) : 0,
    eventsApplied,
    simulatedMs,
    wallMs,
  };
}

function storedEvent(ids: number[], parent: number | null, bs: number): BlockStored {
  const tokenIds = new Array<number>(ids.length * bs);
  for (let k = 0; k < ids.length; k++) tokenIds.fill(blockToken(ids[k]), k * bs, (k + 1) * bs);
  return blockStored(ids.map(hashFromInt), parent === null ? null : hashFromInt(parent), tokenIds, bs, {
    medium: "GPU",
  });
}

function removedEvent(ids: number[]): BlockRemoved {
  return blockRemoved(ids.map(hashFromInt), { medium: "GPU" });
}
