import type { BlockRemoved, BlockStored, KvEvent } from "../protocol/types.ts";
import {
  type Block,
  type CacheRequest,
  KvCache,
  type KvCacheOptions,
  NULL_BLOCK,
  type PrefixLookup,
} from "./kv-cache.ts";

/**
 * A hybrid-attention model's KV cache (`kvsync mock-engine --hybrid <window>`): one
 * sliding-window group and one full-attention group, as vLLM's `HybridKVCacheCoordinator` runs
 * them (vllm/v1/core/kv_cache_coordinator.py, single_type_kv_cache_manager.py):
 *
 * - group 0 is the sliding window (`kv_cache_spec_kind` "sliding_window", window in tokens),
 *   group 1 full attention, as in models whose first layer is a sliding-window one; both cache
 *   every full block under the same chained hash, each in its own pool of `numGpuBlocks` blocks
 *   (vLLM shares one pool between groups; separate pools change only which block is evicted
 *   first, not the rules);
 * - once a request's computed tokens pass a block by the window, the sliding-window group frees
 *   it (`remove_skipped_blocks`): it stays cached until the pool reuses it (then `BlockRemoved`
 *   with group_idx 0), and a later event of the request names only its real blocks;
 * - a prefix hit is the longest prefix both groups accept: the full-attention hit, then in
 *   the sliding-window group the rightmost run of ceil((window - 1) / block size) cached
 *   blocks ending at or before it (with none, the run from block 0); the request takes only
 *   those blocks of the window group (the others are null blocks) and the full-attention blocks
 *   up to that point.
 *
 * The full-attention group is the base `KvCache` (its snapshot is the stream's primary truth);
 * the window group is a second `KvCache` with per-request shadows. No CPU tier in this mode.
 */
export const SLIDING_GROUP = 0;
export const FULL_GROUP = 1;

export class HybridKvCache extends KvCache {
  readonly window: number;
  private readonly swa: KvCache;
  private readonly shadows = new Map<CacheRequest, CacheRequest>();
  /** the window group's blocks of the last lookup, taken by the allocate that follows it */
  private pending: { req: CacheRequest; blocks: Block[] } | null = null;

  constructor(o: KvCacheOptions & { window: number }) {
    if (!Number.isInteger(o.window) || o.window < 1) throw new Error("hybrid window must be an integer >= 1");
    if (o.numCpuBlocks !== 0) throw new Error("the hybrid mode has no CPU tier (numCpuBlocks must be 0)");
    super(o);
    this.window = o.window;
    this.swa = new KvCache(o);
  }

  /** Blocks the window needs before a hit point (vLLM's sliding_window_contiguous_blocks). */
  get windowBlocks(): number {
    return Math.ceil((this.window - 1) / this.blockSize);
  }

  private shadow(req: CacheRequest): CacheRequest {
    let s = this.shadows.get(req);
    if (s === undefined) {
      s = {
        get tokens() {
          return req.tokens;
        },
        get digests() {
          return req.digests;
        },
        blocks: [],
        numCachedBlocks: 0,
        get loraId() {
          return req.loraId;
        },
        get loraName() {
          return req.loraName;
        },
        get cacheSalt() {
          return req.cacheSalt;
        },
      };
      this.shadows.set(req, s);
    }
    return s;
  }

  override lookup(req: CacheRequest, maxBlocks: number): PrefixLookup {
    const full = super.lookup(req, maxBlocks);
    const bound = full.gpuBlocks.length;
    const n = this.windowBlocks;
    const sw: Block[] = new Array(bound).fill(NULL_BLOCK);
    let run = 0;
    let hit = -1;
    for (let i = bound - 1; i >= 0; i--) {
      const b = this.swa.cachedBlock(req.digests[i]);
      if (b === null) {
        run = 0;
        continue;
      }
      sw[i] = b;
      run++;
      if (run >= n) {
        hit = i + run;
        break;
      }
    }
    if (hit < 0) hit = run;
    sw.length = hit;
    this.pending = { req, blocks: sw };
    return { gpuBlocks: full.gpuBlocks.slice(0, hit), cpuBlocks: 0 };
  }

  override canAllocate(req: CacheRequest, totalTokens: number, hit: PrefixLookup | null): boolean {
    const swHit = hit === null ? null : this.pendingHit(req);
    return (
      super.canAllocate(req, totalTokens, hit) && this.swa.canAllocate(this.shadow(req), totalTokens, swHit)
    );
  }

  private pendingHit(req: CacheRequest): PrefixLookup {
    const p = this.pending;
    return { gpuBlocks: p !== null && p.req === req ? p.blocks : [], cpuBlocks: 0 };
  }

  override allocate(
    req: CacheRequest,
    totalTokens: number,
    hit: PrefixLookup | null,
    computedTokens: number,
  ): boolean {
    if (!this.canAllocate(req, totalTokens, hit)) return false;
    const swHit = hit === null ? null : this.pendingHit(req);
    this.pending = null;
    super.allocate(req, totalTokens, hit, computedTokens);
    const sh = this.shadow(req);
    this.swa.allocate(sh, totalTokens, swHit, computedTokens);
    // blocks wholly before the window of the next token are no longer needed
    const skipped = Math.max(0, computedTokens - this.window + 1);
    this.swa.releaseBefore(sh, Math.floor(skipped / this.blockSize));
    return true;
  }

  override free(req: CacheRequest): void {
    super.free(req);
    const sh = this.shadows.get(req);
    if (sh !== undefined) {
      this.swa.free(sh);
      this.shadows.delete(req);
    }
    if (this.pending?.req === req) this.pending = null;
  }

  override reset(): boolean {
    if (!super.reset()) return false;
    this.swa.reset();
    // one AllBlocksCleared for the engine (the base cache's), as vLLM sends
    this.swa.events.pop();
    return true;
  }

  override drainEvents(): KvEvent[] {
    const out: KvEvent[] = [];
    for (const ev of this.swa.drainEvents()) out.push(tag(ev, SLIDING_GROUP, "sliding_window", this.window));
    for (const ev of super.drainEvents()) out.push(tag(ev, FULL_GROUP, "full_attention", null));
    return out;
  }

  /** Ground truth of the sliding-window group: the digests it caches. */
  slidingSnapshot(): ReturnType<KvCache["snapshot"]> {
    return this.swa.snapshot();
  }
}

function tag(ev: KvEvent, group: number, kind: string, window: number | null): KvEvent {
  if (ev.type === "BlockStored")
    return {
      ...ev,
      groupIdx: group,
      kvCacheSpecKind: kind,
      kvCacheSpecSlidingWindow: window,
    } satisfies BlockStored;
  if (ev.type === "BlockRemoved") return { ...ev, groupIdx: group } satisfies BlockRemoved;
  return ev;
}
