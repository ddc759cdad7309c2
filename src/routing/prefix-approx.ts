import { definedOnly, rankByScore } from "./shared.ts";
import type { LoadSource, RouteRequest, RoutingDecision, RoutingPolicy, ScoredCandidate } from "./types.ts";

/** Knobs of prefix-approx (see docs/routing.md). */
export interface PrefixApproxOptions {
  /** how long a routed block is assumed to stay in a pod's cache */
  ttlMs: number;
  /** bound on remembered (block, prefix) nodes across all namespaces; least recently routed go first */
  maxBlocks: number;
  /** block size used to chunk prompts (the engines' block size when known) */
  blockSize?: number;
  /** prefer the best-matching pod only when it holds at least this share of the prompt's blocks */
  matchThreshold: number;
  /** the fleet counts as imbalanced when max - min in-flight exceeds this ... */
  balanceAbsThreshold: number;
  /** ... and max > this * min; then the least loaded pod wins regardless of cache */
  balanceRelThreshold: number;
  now?: () => number;
}

export const PREFIX_APPROX_DEFAULTS: Readonly<PrefixApproxOptions> = Object.freeze({
  ttlMs: 120_000,
  maxBlocks: 200_000,
  matchThreshold: 0.5,
  balanceAbsThreshold: 8,
  balanceRelThreshold: 1.5,
});

interface Node {
  /** stream id → expiry (ms) */
  streams: Map<string, number>;
}

const TWO21 = 0x200000;

function mixString(s: string): [number, number] {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193);
    h2 = Math.imul(h2 ^ c, 0x5bd1e995) ^ (h2 >>> 15);
  }
  return [h1 >>> 0, h2 >>> 0];
}

/**
 * prefix-approx: learns which pod probably holds which prefix from its own routing decisions, no
 * events. An approximate prefix tree: each full block of a routed prompt is a node keyed by a
 * chained 53-bit hash of the whole prefix up to it (so a node stands for the path from the root),
 * remembering the streams it was sent to and until when (TTL). Bounded by `maxBlocks` (LRU).
 */
export class PrefixApproxPolicy implements RoutingPolicy {
  readonly name = "prefix-approx" as const;
  private readonly o: PrefixApproxOptions;
  private readonly nodes = new Map<number, Node>();
  private readonly now: () => number;
  private rotation = 0;
  private evictions = 0;
  /** keys computed in `route`, reused by `onDispatched` for the same request */
  private readonly keyCache = new WeakMap<RouteRequest, number[]>();

  constructor(
    private readonly loads: LoadSource,
    options: Partial<PrefixApproxOptions> = {},
  ) {
    this.o = { ...PREFIX_APPROX_DEFAULTS, ...definedOnly(options) };
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.nodes.size;
  }

  get evicted(): number {
    return this.evictions;
  }

  private blockSize(req: RouteRequest): number {
    return this.o.blockSize ?? req.ns.blockSize;
  }

  /** Chained keys of the prompt's full blocks (hashed once per request). */
  private keys(req: RouteRequest): number[] {
    let out = this.keyCache.get(req);
    if (out === undefined) {
      out = this.hashKeys(req);
      this.keyCache.set(req, out);
    }
    return out;
  }

  private hashKeys(req: RouteRequest): number[] {
    const bs = this.blockSize(req);
    const t = req.tokenIds;
    const blocks = bs > 0 ? Math.floor(t.length / bs) : 0;
    const out: number[] = new Array(blocks);
    let [h1, h2] = mixString(`${req.ns.model}\u0000${req.ns.lora ?? ""}`);
    for (let b = 0; b < blocks; b++) {
      for (let i = b * bs, end = i + bs; i < end; i++) {
        const v = t[i]! | 0;
        h1 = Math.imul(h1 ^ v, 0x01000193);
        h1 ^= h1 >>> 13;
        h2 = Math.imul(h2 ^ v, 0x5bd1e995);
        h2 ^= h2 >>> 15;
      }
      out[b] = (h1 >>> 0) * TWO21 + ((h2 >>> 0) & (TWO21 - 1));
    }
    return out;
  }

  /** Leading blocks each stream is believed to hold. */
  private matches(keys: number[], streams: Set<string>): Map<string, number> {
    const now = this.now();
    const counts = new Map<string, number>();
    let active = streams;
    for (let b = 0; b < keys.length && active.size > 0; b++) {
      const node = this.nodes.get(keys[b]!);
      if (node === undefined) break;
      const next = new Set<string>();
      for (const s of active) {
        const exp = node.streams.get(s);
        if (exp !== undefined && exp > now) {
          next.add(s);
          counts.set(s, b + 1);
        }
      }
      active = next;
    }
    return counts;
  }

  route(req: RouteRequest): RoutingDecision {
    const bs = this.blockSize(req);
    const keys = this.keys(req);
    const counts = this.matches(keys, new Set(req.candidates.map((c) => c.streamId)));
    const scored: ScoredCandidate[] = req.candidates.map((candidate) => {
      const m = counts.get(candidate.streamId) ?? 0;
      return {
        candidate,
        matchedBlocks: m,
        matchedTokens: m * bs,
        tiers: { GPU: m, CPU: 0, STORAGE: 0 },
        savedTokens: m * bs,
        load: this.loads.load(candidate.streamId, candidate.pod),
        score: 0,
      };
    });
    let minLoad = Number.POSITIVE_INFINITY;
    let maxLoad = 0;
    let best = 0;
    for (const s of scored) {
      minLoad = Math.min(minLoad, s.load.inflightRequests);
      maxLoad = Math.max(maxLoad, s.load.inflightRequests);
      best = Math.max(best, s.matchedBlocks);
    }
    const imbalanced =
      maxLoad - minLoad > this.o.balanceAbsThreshold && maxLoad > this.o.balanceRelThreshold * minLoad;
    const cacheMode = !imbalanced && keys.length > 0 && best / keys.length >= this.o.matchThreshold;
    for (const s of scored) {
      // cache mode: most matched blocks first, then fewest in-flight; load mode: the reverse
      s.score = cacheMode
        ? -s.matchedBlocks * 1e6 + s.load.inflightRequests
        : s.load.inflightRequests * 1e6 - s.matchedBlocks;
      s.terms = { cacheMode: cacheMode ? 1 : 0, imbalanced: imbalanced ? 1 : 0 };
    }
    const ranked = rankByScore(scored, req.dryRun ? this.rotation : this.rotation++);
    if (this.rotation > 1e9) this.rotation = 0;
    return { policy: this.name, ranked };
  }

  onDispatched(req: RouteRequest, chosen: ScoredCandidate): void {
    const keys = this.keys(req);
    const exp = this.now() + this.o.ttlMs;
    const sid = chosen.candidate.streamId;
    for (const k of keys) {
      let node = this.nodes.get(k);
      if (node === undefined) {
        node = { streams: new Map() };
      } else {
        this.nodes.delete(k); // re-insert: most recently routed last
      }
      node.streams.set(sid, exp);
      this.nodes.set(k, node);
    }
    this.evict();
  }

  private evict(): void {
    const now = this.now();
    while (this.nodes.size > this.o.maxBlocks) {
      const oldest = this.nodes.keys().next().value as number;
      this.nodes.delete(oldest);
      this.evictions++;
    }
    // drop expired nodes at the LRU end (cheap amortised sweep)
    for (const [k, node] of this.nodes) {
      let alive = false;
      for (const [s, exp] of node.streams) {
        if (exp > now) alive = true;
        else node.streams.delete(s);
      }
      if (alive) break;
      this.nodes.delete(k);
    }
  }

  forget(streamId: string): void {
    for (const [k, node] of this.nodes) {
      node.streams.delete(streamId);
      if (node.streams.size === 0) this.nodes.delete(k);
    }
  }
}
