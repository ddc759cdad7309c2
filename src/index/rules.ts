/**
 * Event-interpretation rules shared by every index backend, so the fast backend and the
 * reference oracle read events identically.
 *
 * - Adapter: `loraName`, else `String(loraId)` when only an id is sent, else null (base model).
 * - Tier: `tierOf(medium)` (null = GPU).
 * - Hybrid models: events with a non-zero `groupIdx` describe another KV-cache group (e.g. a
 *   sliding-window group) and are ignored (counted) by the backends, which follow one group; the
 *   group layer in front of them (groups.ts) hands them the primary group and keeps the others.
 * - Keyable blocks: block i of a BlockStored gets an index key only when tokens
 *   [i*bs, (i+1)*bs) are all present (tokens are taken as aligned from the first block, so a
 *   short/partial `tokenIds` keys only its leading full blocks), the block size is a positive
 *   integer, and the event has no `extraKeys` content (multimodal blocks cannot be matched
 *   from token ids alone) other than the LoRA name and the cache salt (`saltOf`), which
 *   enters the first block's key. Un-keyed blocks are kept for removal but never matched.
 */
import type { BlockRemoved, BlockStored, HashKey, Tier } from "../protocol/types.ts";

export const TIER_GPU = 1;
export const TIER_CPU = 2;
export const TIER_STORAGE = 4;
export const TIER_NAMES: readonly Tier[] = ["GPU", "CPU", "STORAGE"];

export function tierBit(medium: string | null | undefined): number {
  if (medium === null || medium === undefined || medium === "GPU") return TIER_GPU;
  if (medium === "CPU" || medium === "CPU_PINNED") return TIER_CPU;
  return TIER_STORAGE;
}

export function tiersFromBits(bits: number): Tier[] {
  const out: Tier[] = [];
  if (bits & TIER_GPU) out.push("GPU");
  if (bits & TIER_CPU) out.push("CPU");
  if (bits & TIER_STORAGE) out.push("STORAGE");
  return out;
}

export function loraOf(ev: BlockStored): string | null {
  if (typeof ev.loraName === "string") return ev.loraName;
  if (typeof ev.loraId === "number") return String(ev.loraId);
  return null;
}

export function isOtherGroup(ev: BlockStored | BlockRemoved): boolean {
  return typeof ev.groupIdx === "number" && ev.groupIdx !== 0;
}

/**
 * Cache salt of a BlockStored whose first block starts a request's chain (parent null): SGLang's
 * metadata / TensorRT-LLM's top-level `cacheSalt`, else vLLM's, which it puts in the first
 * block's `extraKeys` tuple (lora name, multimodal hashes, salt, prompt-embeds hash): the one
 * string there that is not the LoRA name. The salt enters the index key of that block only (the
 * chain carries it to the rest), as it enters vLLM's block hash.
 */
export function saltOf(ev: BlockStored): string | null {
  if (ev.parentBlockHash !== null && ev.parentBlockHash !== undefined) return null;
  if (typeof ev.cacheSalt === "string") return ev.cacheSalt;
  const first = Array.isArray(ev.extraKeys) ? ev.extraKeys[0] : null;
  if (!Array.isArray(first)) return null;
  for (const k of first) if (typeof k === "string" && k !== ev.loraName) return k;
  return null;
}

/** Extra keys of block i that are neither the LoRA name nor (block 0 of a root event) the salt. */
function otherExtraKeys(ev: BlockStored, i: number, salt: string | null): boolean {
  const k = (ev.extraKeys as unknown[])[i];
  if (k === null || k === undefined) return false;
  if (!Array.isArray(k)) return true;
  for (const x of k) {
    if (x === ev.loraName && x !== null) continue;
    if (i === 0 && salt !== null && x === salt) continue;
    return true;
  }
  return false;
}

/**
 * How many leading blocks of a BlockStored can be keyed (see the module comment). Extra keys
 * other than the LoRA name and the salt (multimodal hashes, prompt embeddings) make their block
 * and every later one of the event unkeyable: token ids alone cannot tell them apart.
 */
export function keyableBlocks(ev: BlockStored): number {
  const bs = ev.blockSize;
  if (!Number.isInteger(bs) || bs < 1) return 0;
  if (!Array.isArray(ev.tokenIds) || !Array.isArray(ev.blockHashes)) return 0;
  let n = Math.min(ev.blockHashes.length, Math.floor(ev.tokenIds.length / bs));
  if (ev.extraKeys !== null && ev.extraKeys !== undefined) {
    if (!Array.isArray(ev.extraKeys)) return 0;
    const salt = saltOf(ev);
    for (let i = 0; i < n && i < ev.extraKeys.length; i++) {
      if (otherExtraKeys(ev, i, salt)) {
        n = i;
        break;
      }
    }
  }
  return n;
}

/**
 * Content-only page hashes (SGLang 2025: a page's hash is its tokens' hash, parent aside) repeat
 * wherever the content repeats, so one engine hash of a stream can name blocks at several
 * positions. The first position keeps the hash's entry; each later one is an alias entry under
 * `aliasKey(hash, n)` (n = 1, 2, ...). A removal takes the latest alias first (a radix tree
 * evicts its deepest nodes first), a parent resolves to the latest one (the pages of a node are
 * stored in order). vLLM's chained hashes never take this path: equal hashes have equal keys.
 */
export const MAX_ALIASES = 64;
export function aliasKey(hash: HashKey, n: number): HashKey {
  return `a${n}\u0000${hash}`;
}
/** Alias entries are the index's own; engine hashes start with "u", "n" or "b". */
export function isAliasKey(hash: HashKey): boolean {
  return hash.charCodeAt(0) === 0x61;
}

/** Counters every backend keeps (exported through `stats()` for the metrics layer). */
export interface IndexCounters {
  /** entries evicted because the global cap was reached */
  evictionsGlobal: number;
  /** entries evicted because the stream's cap was reached */
  evictionsStream: number;
  /** BlockRemoved hashes (or tiers) the stream did not hold: no-ops */
  unknownRemovals: number;
  /** BlockStored events whose non-null parent the stream did not hold (stored unmatched) */
  orphanStores: number;
  /** events ignored: other KV-cache groups, unknown event types */
  ignoredEvents: number;
  /** malformed content skipped (non-string hashes, non-array fields) */
  invalidEvents: number;
  /** BlockStored of a hash the stream already held on that tier: another physical copy */
  duplicateStores: number;
}

export function newCounters(): IndexCounters {
  return {
    evictionsGlobal: 0,
    evictionsStream: 0,
    unknownRemovals: 0,
    orphanStores: 0,
    ignoredEvents: 0,
    invalidEvents: 0,
    duplicateStores: 0,
  };
}

export interface IndexOptions {
  /** global cap on (block, stream) entries; least-recently-touched entries are evicted (default 10M) */
  maxEntries?: number;
  /** per-stream cap on entries (default 2M) */
  maxEntriesPerStream?: number;
  /**
   * Several physical copies of one hash on one tier (vLLM: two requests computed the same
   * prefix concurrently; a BlockStored per copy, a BlockRemoved per evicted copy).
   * "count" (default): the claim goes with the last copy's BlockRemoved (exact for vLLM, and for
   * the mock engine, whose default `--removed-events per-copy` does the same); copies are counted
   * per (block, stream, tier) up to 1 + MAX_EXTRA_COPIES, beyond which a removal may drop the
   * claim early.
   * "set": for engines that send one BlockRemoved per hash (the mock engine's `--removed-events
   * last-copy`): the first BlockRemoved drops the claim; a re-store is idempotent.
   */
  copies?: "count" | "set";
  /** called once per evicted entry (metrics hook) */
  onEvict?: (streamId: string, reason: "global" | "stream") => void;
}

export const DEFAULT_MAX_ENTRIES = 10_000_000;
export const DEFAULT_MAX_ENTRIES_PER_STREAM = 2_000_000;
/** copies per (block, stream, tier) counted exactly: 1 + this many extra */
export const MAX_EXTRA_COPIES = 7;

export function resolveCaps(opts: IndexOptions): { maxEntries: number; maxPerStream: number } {
  const maxEntries = Math.max(1, Math.floor(opts.maxEntries ?? DEFAULT_MAX_ENTRIES));
  const maxPerStream = Math.max(1, Math.floor(opts.maxEntriesPerStream ?? DEFAULT_MAX_ENTRIES_PER_STREAM));
  return { maxEntries, maxPerStream };
}
