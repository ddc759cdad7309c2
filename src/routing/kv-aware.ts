import type { StreamMatch, TierCounts } from "../index/types.ts";
import { definedOnly, rankByScore } from "./shared.ts";
import type {
  Candidate,
  LoadSource,
  LoadView,
  MatchSource,
  RouteRequest,
  RoutingDecision,
  RoutingPolicy,
  ScoredCandidate,
  TrustSource,
} from "./types.ts";
import { preferLeastWork } from "./work-slack.ts";

/** Knobs of the kv-aware score (see docs/routing.md for the formula). */
export interface KvAwareOptions {
  /** share of a cached block's prefill saved per tier (GPU > CPU > STORAGE) */
  gpuWeight: number;
  cpuWeight: number;
  storageWeight: number;
  /** token-equivalents each running request adds to a new request's time to first token */
  runningRequestCost: number;
  /** tokens assumed per request the engine reports waiting beyond this gateway's own */
  waitingRequestTokens: number;
  /** KV usage (0..1) above which a pod is penalised */
  kvUsageWatermark: number;
  /** score multiplier added at 100 % KV usage (linear from the watermark) */
  kvUsagePenalty: number;
  /**
   * count the queue as drained at the stream's learned prefill rate (LoadView.drainedPrefillTokens)
   * instead of every in-prefill token still waiting
   */
  drainQueue: boolean;
  /**
   * non-greedy step (work-slack.ts): among candidates within this share of the best estimate,
   * take the one that adds the least prefill work; 0 = greedy
   */
  workSlack: number;
}

export const KV_AWARE_DEFAULTS: Readonly<KvAwareOptions> = Object.freeze({
  gpuWeight: 1,
  cpuWeight: 0.8,
  storageWeight: 0.5,
  runningRequestCost: 256,
  waitingRequestTokens: 1024,
  kvUsageWatermark: 0.9,
  kvUsagePenalty: 1,
  drainQueue: true,
  workSlack: 0.2,
});

/** distinct stream ids kept in the slot map before it starts over */
const MAX_SLOTS = 1 << 16;

const ZERO_TIERS: TierCounts = Object.freeze({ GPU: 0, CPU: 0, STORAGE: 0 }) as TierCounts;

/** Full blocks of a prompt of `n` tokens that an engine can reuse: it always computes the last token. */
export function reusableBlocks(n: number, blockSize: number): number {
  if (n <= 1 || blockSize <= 0) return 0;
  return Math.floor((n - 1) / blockSize);
}

/**
 * Prefill tokens saved by a match, tier-weighted. Tier counts are leading-block counts, so the
 * first `GPU` blocks are on GPU, the next up to max(GPU, CPU) come from CPU, the rest from storage.
 */
export function savedTokens(
  matchedBlocks: number,
  tiers: TierCounts,
  blockSize: number,
  capBlocks: number,
  o: Pick<KvAwareOptions, "gpuWeight" | "cpuWeight" | "storageWeight">,
): number {
  const m = Math.min(matchedBlocks, capBlocks);
  const g = Math.min(tiers.GPU, m);
  const gc = Math.min(Math.max(g, tiers.CPU), m);
  return blockSize * (g * o.gpuWeight + (gc - g) * o.cpuWeight + (m - gc) * o.storageWeight);
}

/** Estimated time to first token, in prefill-token equivalents, plus its terms. */
export function estimateTtft(
  promptTokens: number,
  saved: number,
  load: LoadView,
  o: KvAwareOptions,
): { score: number; queued: number; uncached: number; running: number; kvFactor: number } {
  const uncached = Math.max(0, promptTokens - saved);
  const otherWaiting =
    load.engineWaiting === null ? 0 : Math.max(0, load.engineWaiting - load.inflightPrefillRequests);
  const own =
    o.drainQueue && load.drainedPrefillTokens != null
      ? load.drainedPrefillTokens
      : load.inflightPrefillTokens;
  const queued = own + otherWaiting * o.waitingRequestTokens;
  const running = Math.max(load.inflightRequests, load.engineRunning ?? 0);
  let kvFactor = 1;
  if (load.kvUsage !== null && load.kvUsage > o.kvUsageWatermark && o.kvUsageWatermark < 1) {
    kvFactor +=
      (o.kvUsagePenalty * (Math.min(1, load.kvUsage) - o.kvUsageWatermark)) / (1 - o.kvUsageWatermark);
  }
  // +1: the last prompt token is always computed, so a fully cached prompt still costs a step
  const score = (queued + uncached + 1 + running * o.runningRequestCost) * kvFactor;
  return { score, queued, uncached, running, kvFactor };
}

/**
 * kv-aware: for each ready candidate, the prefill its cache saves (from the sync index, only for
 * streams that are live) against its load, combined as an estimated time to first token.
 */
export class KvAwarePolicy implements RoutingPolicy {
  readonly name = "kv-aware" as const;
  private readonly o: KvAwareOptions;
  private rotation = 0;
  /** streamId -> slot for matchStamp / matchPos (bounded by MAX_SLOTS) */
  private readonly slots = new Map<string, number>();
  /** per slot: the decision (stamp) whose match list holds the stream, and its position there */
  private matchStamp = new Uint32Array(128);
  private matchPos = new Int32Array(128);
  private stamp = 0;

  constructor(
    private readonly index: MatchSource,
    private readonly loads: LoadSource,
    options: Partial<KvAwareOptions> = {},
    /** the prediction feedback: a stream's claims count times its trust (null: fully) */
    private readonly trusts: TrustSource | null = null,
  ) {
    this.o = { ...KV_AWARE_DEFAULTS, ...definedOnly(options) };
  }

  get options(): Readonly<KvAwareOptions> {
    return this.o;
  }

  route(req: RouteRequest): RoutingDecision {
    const n = req.tokenIds.length;
    const nsSize = req.ns.blockSize;
    // this decision's matches, found by stream through slotOf (no Map per decision: a 100-entry
    // Map is ~7 kB of the decision's garbage)
    let found: StreamMatch[] = [];
    const stamp = this.nextStamp();
    // one match per block size among the live candidates (pods of a model usually share one)
    let sizes: number[] | null = null;
    for (const c of req.candidates) {
      if (!c.live) continue;
      const bs = c.blockSize ?? nsSize;
      if (sizes === null) sizes = [bs];
      else if (!sizes.includes(bs)) sizes.push(bs);
    }
    if (sizes !== null) {
      const mixed = sizes.length > 1;
      for (const bs of sizes) {
        if (reusableBlocks(n, bs) === 0) continue;
        let matches: StreamMatch[] = [];
        try {
          matches = this.index.match(bs === nsSize ? req.ns : { ...req.ns, blockSize: bs }, req.tokenIds);
        } catch {
          matches = [];
        }
        // a stream's blocks live in its events' block size; with mixed sizes, a match in another
        // size (a stream whose size changed) must not stand in for its own
        if (!mixed) found = matches; // one size: the index's list itself, no copy
        for (let k = 0; k < matches.length; k++) {
          const m = matches[k];
          if (mixed && this.sizeOf(req, m.streamId) !== bs) continue;
          const slot = this.slotOf(m.streamId);
          this.matchStamp[slot] = stamp;
          this.matchPos[slot] = mixed ? found.length : k;
          if (mixed) found.push(m);
        }
      }
    }
    const scored = req.candidates.map((c) => {
      const bs = c.blockSize ?? nsSize;
      const slot = this.slots.get(c.streamId);
      const m =
        slot !== undefined && this.matchStamp[slot] === stamp ? found[this.matchPos[slot]] : undefined;
      return this.score(c, m, n, bs, reusableBlocks(n, bs));
    });
    const ranked = preferLeastWork(
      rankByScore(scored, req.dryRun ? this.rotation : this.rotation++),
      n,
      this.o.workSlack,
    );
    if (this.rotation > 1e9) this.rotation = 0;
    return { policy: this.name, ranked };
  }

  /** A stable small number for a stream id (kept across decisions; strings and ints only). */
  private slotOf(streamId: string): number {
    let slot = this.slots.get(streamId);
    if (slot === undefined) {
      slot = this.slots.size;
      this.slots.set(streamId, slot);
      if (slot >= this.matchStamp.length) {
        const stamps = new Uint32Array(this.matchStamp.length * 2);
        stamps.set(this.matchStamp);
        this.matchStamp = stamps;
        const pos = new Int32Array(this.matchPos.length * 2);
        pos.set(this.matchPos);
        this.matchPos = pos;
      }
    }
    return slot;
  }

  /**
   * A new decision's stamp. Between decisions (never within one, whose slots must stay put) the
   * slot map starts over when streams that came and went filled it: it holds at most MAX_SLOTS
   * plus one decision's matches.
   */
  private nextStamp(): number {
    if (this.slots.size >= MAX_SLOTS) this.slots.clear();
    if (this.stamp >= 0xfffffffe || this.slots.size === 0) {
      this.stamp = 0;
      this.matchStamp.fill(0);
    }
    return ++this.stamp;
  }

  private sizeOf(req: RouteRequest, streamId: string): number {
    for (const c of req.candidates) if (c.streamId === streamId) return c.blockSize ?? req.ns.blockSize;
    return req.ns.blockSize;
  }

  private score(
    c: Candidate,
    m: StreamMatch | undefined,
    n: number,
    bs: number,
    cap: number,
  ): ScoredCandidate {
    const counts = c.live && m !== undefined;
    const matchedBlocks = counts ? Math.min(m.matchedBlocks, cap) : 0;
    const tiers = counts ? m.tiers : ZERO_TIERS;
    const trust = this.trusts === null ? 1 : this.trusts.trust(c.streamId);
    const saved = counts ? savedTokens(m.matchedBlocks, m.tiers, bs, cap, this.o) * trust : 0;
    const load = this.loads.load(c.streamId, c.pod);
    const e = estimateTtft(n, saved, load, this.o);
    return {
      candidate: c,
      matchedBlocks,
      matchedTokens: matchedBlocks * bs,
      // the match's own counts when the cap does not cut them (no copy per candidate)
      tiers:
        tiers.GPU <= cap && tiers.CPU <= cap && tiers.STORAGE <= cap
          ? tiers
          : {
              GPU: Math.min(tiers.GPU, cap),
              CPU: Math.min(tiers.CPU, cap),
              STORAGE: Math.min(tiers.STORAGE, cap),
            },
      savedTokens: saved,
      trust,
      load,
      score: e.score,
      terms: { queued: e.queued, uncached: e.uncached, running: e.running, kvFactor: e.kvFactor },
    };
  }
}
