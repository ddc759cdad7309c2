/**
 * Event-interpretation rules shared by every index backend, so the fast backend and the
 * reference oracle read events identically.
 *
 * - Adapter: `loraName`, else `String(loraId)` when only an id is sent, else null (base model).
 * - Tier: `tierOf(medium)` (null = GPU).
 * - Hybrid models: events with a non-zero `groupIdx` describe another KV-cache group (e.g. a
 *   sliding-window group) and are ignored (counted); the index follows group 0.
 * - Keyable blocks: block i of a BlockStored gets an index key only when tokens
 *   [i*bs, (i+1)*bs) are all present (tokens are taken as aligned from the first block, so a
 *   short/partial `tokenIds` keys only its leading full blocks), the block size is a positive
 *   integer, and the event has no `extraKeys` content (multimodal / cache-salt blocks cannot be
 *   matched from token ids alone). Un-keyed blocks are kept for removal but never matched.
 */
import type { BlockRemoved, BlockStored, Tier } from "../protocol/types.ts";

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

function hasExtraKeys(x: unknown[] | null | undefined): boolean {
  if (!Array.isArray(x)) return false;
  for (const k of x) {
    if (k === null || k === undefined) continue;
    if (Array.isArray(k) && k.length === 0) continue;
    return true;
  }
  return false;
}

/** How many leading blocks of a BlockStored can be keyed (see the module comment). */
export function keyableBlocks(ev: BlockStored): number {
  const bs = ev.blockSize;
  if (!Number.isInteger(bs) || bs < 1) return 0;
  if (!Array.isArray(ev.tokenIds) || !Array.isArray(ev.blockHashes)) return 0;
  if (hasExtraKeys(ev.extraKeys)) return 0;
  return Math.min(ev.blockHashes.length, Math.floor(ev.tokenIds.length / bs));
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
