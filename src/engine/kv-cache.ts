import { blockRemoved, blockStored } from "../protocol/build.ts";
import type { BlockStored, HashKey, KvEvent } from "../protocol/types.ts";
import type { Digest } from "./block-hash.ts";

/**
 * A paged KV cache with vLLM's prefix-caching semantics (v1 `BlockPool`/`KVCacheManager`):
 *
 * - `numGpuBlocks` physical blocks of `blockSize` tokens. (vLLM reserves block 0 as a "null
 *   block"; here every block is usable, so `--num-gpu-blocks N` means N usable blocks.)
 * - A full block gets the chained hash of its tokens and is registered in the prefix cache
 *   when the tokens filling it are scheduled (`BlockStored`, medium GPU).
 * - Reference counts: a block used by running requests is never evicted. Blocks whose count
 *   drops to 0 go to the tail of a free queue (a request's blocks in reverse order, so its
 *   last blocks are evicted first); allocation takes from the head (least recently used).
 *   Taking a block that still holds a hash evicts it from the prefix cache (`BlockRemoved`).
 * - A prefix hit "touches" cached blocks: ref count + 1 and out of the free queue.
 * - Several physical blocks may hold the same hash (two requests computed the same prefix at
 *   once). vLLM emits `BlockStored` for each copy and `BlockRemoved` for each evicted copy, so
 *   a set-based subscriber loses a block that is still cached; here `BlockStored` is emitted
 *   for each copy as vLLM does (re-storing is idempotent) but `BlockRemoved` only when the
 *   last copy leaves, so the event stream is exact for a set-based subscriber.
 *
 * Optional CPU tier (`numCpuBlocks` > 0), modelled on vLLM's offloading connector:
 * write-through — every block registered on GPU is also stored on CPU (`BlockStored` medium
 * CPU, empty token ids and no parent, as the connector sends them, with the request's LoRA); the CPU tier is an LRU of
 * `numCpuBlocks` hashes whose evictions emit `BlockRemoved` medium CPU. On a GPU miss, the
 * following blocks found on CPU are loaded into newly allocated GPU blocks (counted as cached
 * tokens, charged the load cost by the scheduler) and registered on GPU again.
 *
 * Everything is synchronous; events accumulate in `events` and are drained once per
 * scheduler step.
 */
export class Block {
  readonly id: number;
  refCnt = 0;
  digest: Digest | null = null;
  prev: Block | null = null;
  next: Block | null = null;
  constructor(id: number) {
    this.id = id;
  }
}

/**
 * vLLM's null block: the place of a block a sliding-window group no longer needs (out of the
 * window, or before a prefix hit's window). Never in the free queue, never cached.
 */
export const NULL_BLOCK = new Block(-3);

/** What the cache needs to know about a request. */
export interface CacheRequest {
  /** prompt + generated tokens so far */
  tokens: number[];
  /** digests of every full block of `tokens` (kept up to date by the owner) */
  digests: Digest[];
  /** physical blocks, in order */
  blocks: Block[];
  /** leading blocks already registered in the prefix cache */
  numCachedBlocks: number;
  loraId: number | null;
  loraName: string | null;
  /** the request's cache salt (null: none), published with its blocks */
  cacheSalt?: string | null;
}

export interface PrefixLookup {
  /** GPU blocks to reuse (leading) */
  gpuBlocks: Block[];
  /** number of following blocks available on the CPU tier */
  cpuBlocks: number;
}

export interface KvCacheOptions {
  numGpuBlocks: number;
  numCpuBlocks: number;
  blockSize: number;
  /** published form of a digest (int or bytes format) */
  hashOf: (d: Digest) => HashKey;
  /**
   * SGLang 2025's page hashes: a block's published hash is the hash of its own tokens, parent
   * aside, so equal content at two positions publishes one hash. The cache still keys blocks by
   * their chained digest (a prefix is a prefix); only the published identity changes.
   */
  contentHash?: (tokens: ArrayLike<number>, start: number, blockSize: number) => HashKey;
  /**
   * "last-copy" (default): BlockRemoved when the last physical copy of a hash is evicted, exact
   * for set-based subscribers. "per-copy": one BlockRemoved per evicted copy, as vLLM does.
   */
  removals?: "last-copy" | "per-copy";
}

export interface CacheStats {
  gpuBlocks: number;
  gpuUsed: number;
  gpuFree: number;
  gpuCachedHashes: number;
  cpuBlocks: number;
  cpuCachedHashes: number;
  gpuEvictions: number;
  cpuEvictions: number;
}

export class KvCache {
  readonly blockSize: number;
  readonly numGpuBlocks: number;
  readonly numCpuBlocks: number;
  /** published form of a digest (the engine's --hash-format, or its content hash) */
  readonly hashOf: (d: Digest) => HashKey;
  private readonly contentHash: KvCacheOptions["contentHash"];
  /** content-hash mode: the published hash of each digest held on some tier */
  private readonly published = new Map<Digest, HashKey>();
  private readonly perCopyRemovals: boolean;
  private readonly blocks: Block[] = [];
  /** free queue: sentinel-based doubly linked list, head = LRU */
  private readonly head = new Block(-1);
  private readonly tail = new Block(-2);
  private numFree = 0;
  /** prefix cache: digest -> physical blocks holding it (usually one) */
  private readonly cached = new Map<Digest, Block[]>();
  /** CPU tier: digest -> true, Map order = LRU order (first = least recent) */
  private readonly cpu = new Map<Digest, true>();
  /** events of the current step */
  events: KvEvent[] = [];
  gpuEvictions = 0;
  cpuEvictions = 0;

  constructor(o: KvCacheOptions) {
    if (!Number.isInteger(o.numGpuBlocks) || o.numGpuBlocks < 1) throw new Error("numGpuBlocks must be >= 1");
    if (!Number.isInteger(o.numCpuBlocks) || o.numCpuBlocks < 0) throw new Error("numCpuBlocks must be >= 0");
    if (!Number.isInteger(o.blockSize) || o.blockSize < 1) throw new Error("blockSize must be >= 1");
    this.blockSize = o.blockSize;
    this.numGpuBlocks = o.numGpuBlocks;
    this.numCpuBlocks = o.numCpuBlocks;
    const base = o.hashOf;
    this.contentHash = o.contentHash;
    this.hashOf = o.contentHash === undefined ? base : (d) => this.published.get(d) ?? base(d);
    this.perCopyRemovals = o.removals === "per-copy";
    this.head.next = this.tail;
    this.tail.prev = this.head;
    for (let i = 0; i < o.numGpuBlocks; i++) {
      const b = new Block(i);
      this.blocks.push(b);
      this.pushFree(b);
    }
  }

  get freeBlocks(): number {
    return this.numFree;
  }

  /** vLLM's kv_cache_usage_perc: fraction of blocks in use by requests (0..1). */
  usage(): number {
    return (this.numGpuBlocks - this.numFree) / this.numGpuBlocks;
  }

  /**
   * Longest cached prefix of the request, over at most `maxBlocks` leading blocks (the caller
   * passes (numTokens - 1) / blockSize: vLLM always recomputes the last prompt token).
   */
  lookup(req: CacheRequest, maxBlocks: number): PrefixLookup {
    const gpuBlocks: Block[] = [];
    const n = Math.min(maxBlocks, req.digests.length);
    let i = 0;
    for (; i < n; i++) {
      const copies = this.cached.get(req.digests[i]);
      if (copies === undefined) break;
      gpuBlocks.push(copies[0]);
    }
    let cpuBlocks = 0;
    if (this.numCpuBlocks > 0) {
      for (; i < n && this.cpu.has(req.digests[i]); i++) cpuBlocks++;
    }
    return { gpuBlocks, cpuBlocks };
  }

  /** Blocks needed to hold `numTokens` tokens. */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /**
   * Allocates what the request needs to hold `totalTokens` tokens, first taking the prefix
   * hit `hit` (only on the request's first allocation). Returns false (and changes nothing)
   * if there are not enough free blocks. `computedTokens` = tokens whose KV will exist after
   * this step (for registering full blocks).
   */
  allocate(
    req: CacheRequest,
    totalTokens: number,
    hit: PrefixLookup | null,
    computedTokens: number,
  ): boolean {
    if (!this.fits(req, totalTokens, hit)) return false;
    const hitBlocks = hit === null ? 0 : hit.gpuBlocks.length;
    const need = this.blocksFor(totalTokens) - req.blocks.length - hitBlocks;
    if (hit !== null) {
      for (const b of hit.gpuBlocks) {
        if (b === NULL_BLOCK) {
          req.blocks.push(b);
          continue;
        }
        if (b.refCnt === 0) this.removeFree(b);
        b.refCnt++;
        req.blocks.push(b);
      }
      req.numCachedBlocks = req.blocks.length;
      if (this.numCpuBlocks > 0) {
        for (const b of hit.gpuBlocks) if (b !== NULL_BLOCK) this.cpuTouch(b.digest!);
      }
    }
    for (let i = 0; i < need; i++) {
      const b = this.popFree();
      b.refCnt = 1;
      req.blocks.push(b);
    }
    this.cacheFullBlocks(req, computedTokens);
    return true;
  }

  /** Whether `allocate` would succeed (enough free blocks once the hit's are taken). */
  canAllocate(req: CacheRequest, totalTokens: number, hit: PrefixLookup | null): boolean {
    return this.fits(req, totalTokens, hit);
  }

  private fits(req: CacheRequest, totalTokens: number, hit: PrefixLookup | null): boolean {
    const hitBlocks = hit === null ? 0 : hit.gpuBlocks.length;
    const need = this.blocksFor(totalTokens) - req.blocks.length - hitBlocks;
    let evictableHits = 0;
    if (hit !== null) for (const b of hit.gpuBlocks) if (b !== NULL_BLOCK && b.refCnt === 0) evictableHits++;
    return need <= this.numFree - evictableHits;
  }

  /** A cached block holding `d` (the first copy), or null. */
  cachedBlock(d: Digest): Block | null {
    return this.cached.get(d)?.[0] ?? null;
  }

  /**
   * vLLM's `remove_skipped_blocks`: the request's blocks before `numBlocks` that are still real
   * are freed (the latest first, so the oldest is evicted last) and become null blocks.
   */
  releaseBefore(req: CacheRequest, numBlocks: number): void {
    for (let i = Math.min(numBlocks, req.blocks.length) - 1; i >= 0; i--) {
      const b = req.blocks[i];
      if (b === NULL_BLOCK) break;
      req.blocks[i] = NULL_BLOCK;
      b.refCnt--;
      if (b.refCnt === 0) this.pushFree(b);
    }
  }

  /**
   * Registers the request's blocks that are full once `computedTokens` tokens are computed. Null
   * blocks are skipped (vLLM's `cache_full_blocks`): the event names the real blocks only while
   * its token ids span the whole range.
   */
  private cacheFullBlocks(req: CacheRequest, computedTokens: number): void {
    const full = Math.min(Math.floor(computedTokens / this.blockSize), req.digests.length, req.blocks.length);
    if (full <= req.numCachedBlocks) return;
    const first = req.numCachedBlocks;
    const hashes: HashKey[] = [];
    for (let i = first; i < full; i++) {
      const b = req.blocks[i];
      if (b === NULL_BLOCK) continue;
      const d = req.digests[i];
      b.digest = d;
      if (this.contentHash !== undefined && !this.published.has(d))
        this.published.set(d, this.contentHash(req.tokens, i * this.blockSize, this.blockSize));
      const copies = this.cached.get(d);
      if (copies === undefined) this.cached.set(d, [b]);
      else copies.push(b);
      hashes.push(this.hashOf(d));
    }
    this.events.push(
      blockStored(
        hashes,
        first === 0 ? null : this.hashOf(req.digests[first - 1]),
        req.tokens.slice(first * this.blockSize, full * this.blockSize),
        this.blockSize,
        this.storedFields(req, first, hashes.length),
      ),
    );
    req.numCachedBlocks = full;
    if (this.numCpuBlocks > 0) this.cpuStore(req.digests, first, hashes, req.loraId, req.loraName);
  }

  /**
   * Fields of a BlockStored of blocks [first, first + n) of `req`. A salted request's salt goes
   * where each engine puts it (the publisher's era writes the one its engine has): vLLM's first
   * block's extra_keys tuple (after the LoRA name), and SGLang's metadata / TensorRT-LLM's
   * cache_salt on every event of the request.
   */
  private storedFields(req: CacheRequest, first: number, n: number): Partial<BlockStored> {
    const f: Partial<BlockStored> = { loraId: req.loraId, medium: "GPU", loraName: req.loraName };
    const salt = req.cacheSalt ?? null;
    if (salt === null) return f;
    f.cacheSalt = salt;
    if (first === 0) {
      const keys: unknown[] = new Array(n).fill(null);
      keys[0] = req.loraName === null ? [salt] : [req.loraName, salt];
      f.extraKeys = keys;
    }
    return f;
  }

  /** Releases the request's blocks (reverse order: its tail is evicted first). */
  free(req: CacheRequest): void {
    for (let i = req.blocks.length - 1; i >= 0; i--) {
      const b = req.blocks[i];
      if (b === NULL_BLOCK) continue;
      b.refCnt--;
      if (b.refCnt === 0) this.pushFree(b);
    }
    req.blocks = [];
    req.numCachedBlocks = 0;
  }

  /**
   * vLLM's reset_prefix_cache: fails (false) while any block is in use; otherwise forgets every
   * hash on both tiers and emits one AllBlocksCleared.
   */
  reset(): boolean {
    if (this.numFree !== this.numGpuBlocks) return false;
    for (const b of this.blocks) b.digest = null;
    this.cached.clear();
    this.cpu.clear();
    this.published.clear();
    this.events.push({ type: "AllBlocksCleared" });
    return true;
  }

  drainEvents(): KvEvent[] {
    const ev = this.events;
    this.events = [];
    return ev;
  }

  /** Ground truth: every cached hash with the tiers holding it (GPU first, then CPU-only). */
  snapshot(): Array<{ digest: Digest; tiers: Array<"GPU" | "CPU"> }> {
    const out: Array<{ digest: Digest; tiers: Array<"GPU" | "CPU"> }> = [];
    for (const d of this.cached.keys())
      out.push({ digest: d, tiers: this.cpu.has(d) ? ["GPU", "CPU"] : ["GPU"] });
    for (const d of this.cpu.keys()) if (!this.cached.has(d)) out.push({ digest: d, tiers: ["CPU"] });
    return out;
  }

  stats(): CacheStats {
    return {
      gpuBlocks: this.numGpuBlocks,
      gpuUsed: this.numGpuBlocks - this.numFree,
      gpuFree: this.numFree,
      gpuCachedHashes: this.cached.size,
      cpuBlocks: this.numCpuBlocks,
      cpuCachedHashes: this.cpu.size,
      gpuEvictions: this.gpuEvictions,
      cpuEvictions: this.cpuEvictions,
    };
  }

  /** Hashes in the free queue from LRU to MRU (for tests of eviction order). */
  freeQueueDigests(): Digest[] {
    const out: Digest[] = [];
    for (let b = this.head.next!; b !== this.tail; b = b.next!) if (b.digest !== null) out.push(b.digest);
    return out;
  }

  // ---- internals ----

  private pushFree(b: Block): void {
    const last = this.tail.prev!;
    last.next = b;
    b.prev = last;
    b.next = this.tail;
    this.tail.prev = b;
    this.numFree++;
  }

  private removeFree(b: Block): void {
    b.prev!.next = b.next;
    b.next!.prev = b.prev;
    b.prev = null;
    b.next = null;
    this.numFree--;
  }

  private popFree(): Block {
    const b = this.head.next!;
    if (b === this.tail) throw new Error("no free block");
    this.removeFree(b);
    if (b.digest !== null) this.evict(b);
    return b;
  }

  private evict(b: Block): void {
    const d = b.digest!;
    b.digest = null;
    const copies = this.cached.get(d);
    if (copies === undefined) return;
    const i = copies.indexOf(b);
    if (i >= 0) copies.splice(i, 1);
    if (copies.length > 0 && !this.perCopyRemovals) return;
    if (copies.length === 0) this.cached.delete(d);
    this.gpuEvictions++;
    this.events.push(blockRemoved([this.hashOf(d)], { medium: "GPU" }));
    if (copies.length === 0) this.forget(d);
  }

  /** content-hash mode: a digest on no tier any more has no published hash */
  private forget(d: Digest): void {
    if (this.contentHash !== undefined && !this.cached.has(d) && !this.cpu.has(d)) this.published.delete(d);
  }

  private cpuTouch(d: Digest): void {
    if (this.cpu.delete(d)) this.cpu.set(d, true);
  }

  /** `digests[first + i]` for each published `hashes[i]` (those of the GPU BlockStored). */
  private cpuStore(
    digests: Digest[],
    first: number,
    hashes: HashKey[],
    loraId: number | null,
    loraName: string | null,
  ): void {
    const stored: HashKey[] = [];
    const removed: HashKey[] = [];
    for (let i = 0; i < hashes.length; i++) {
      const d = digests[first + i];
      if (this.cpu.has(d)) {
        this.cpuTouch(d);
        continue;
      }
      if (this.cpu.size >= this.numCpuBlocks) {
        const lru = this.cpu.keys().next().value as Digest;
        this.cpu.delete(lru);
        this.cpuEvictions++;
        const k = this.hashOf(lru);
        this.forget(lru);
        const j = stored.indexOf(k);
        // stored and evicted within the same event: drop it from both lists
        if (j >= 0) stored.splice(j, 1);
        else removed.push(k);
      }
      this.cpu.set(d, true);
      stored.push(hashes[i]);
    }
    if (removed.length > 0) {
      this.events.push(blockRemoved(removed, { medium: "CPU" }));
    }
    if (stored.length > 0) {
      this.events.push(blockStored(stored, null, [], this.blockSize, { loraId, medium: "CPU", loraName }));
    }
  }
}
