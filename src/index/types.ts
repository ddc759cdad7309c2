import type { EventBatch, HashKey, Tier } from "../protocol/types.ts";

/**
 * The sync prefix index contract (contract; backends implement it).
 *
 * A *stream* is one engine event stream: a pod, or one data-parallel rank of a pod
 * (`streamId` = "<pod>" or "<pod>#<rank>"). A *namespace* is (model, LoRA adapter, block size):
 * blocks never match across namespaces.
 */
export interface StreamRef {
  streamId: string;
  pod: string;
  /** data-parallel rank, null for single-rank engines */
  rank: number | null;
  /** the base model the pod serves */
  model: string;
}

export interface NamespaceRef {
  model: string;
  /** LoRA adapter name, null for the base model */
  lora: string | null;
  blockSize: number;
  /**
   * The request's cache salt (vLLM's `cache_salt`): it enters the first block's key, so a salted
   * request matches only blocks stored under the same salt and an unsalted one none of them.
   */
  salt?: string | null;
}

export interface TierCounts {
  GPU: number;
  CPU: number;
  STORAGE: number;
}

export interface StreamMatch {
  streamId: string;
  pod: string;
  rank: number | null;
  /** leading blocks cached on any tier */
  matchedBlocks: number;
  /** leading blocks cached per tier (a block counts for every tier that holds it) */
  tiers: TierCounts;
}

export interface BlockClaim {
  /** engine hash (canonical in-memory form) */
  hash: HashKey;
  tiers: Tier[];
}

export interface IndexStats {
  entries: number;
  blocks: number;
  streams: number;
  approxBytes: number;
  evictions: number;
  /** evictions by cause (sum = evictions) */
  evictionsGlobal?: number;
  evictionsStream?: number;
  /** BlockRemoved hashes/tiers the stream did not hold (no-ops) */
  unknownRemovals?: number;
  /** BlockStored events whose non-null parent the stream did not hold (kept, never matched) */
  orphanStores?: number;
  /** events ignored (other KV-cache groups, unknown types) */
  ignoredEvents?: number;
  /** malformed content skipped */
  invalidEvents?: number;
  /** BlockStored of a hash already held on that tier (another physical copy) */
  duplicateStores?: number;
}

/**
 * A stream's entries in a form another process loads (a peer replica's catch-up), oldest
 * touched first. Keys are the index's own chain keys, which already encode the namespace.
 */
export interface StreamExport {
  /** the stream model's namespaces the index knows: [adapter or null, block size] */
  namespaces: Array<[string | null, number]>;
  /** engine hashes, canonical text */
  hashes: HashKey[];
  /** per entry: tier bits (GPU 1, CPU 2, STORAGE 4) | extra copies (3 bits per tier) << 3 | 4096 when keyed */
  meta: number[];
  /** per entry: the chain key as two int32 (hi, lo); 0, 0 when the entry is kept for removal only */
  keys: number[];
}

/** A hybrid model's KV-cache group other than the one `streamBlocks` lists (groups.ts). */
export interface GroupClaims {
  group: number;
  /** "full" | "sliding" | "other" */
  kind: string;
  /** sliding window in tokens; 0 for full attention */
  window: number;
  /** engine hashes the group holds */
  hashes: HashKey[];
}

export interface PrefixIndex {
  /** Apply a decoded batch of one stream, in seq order. Never throws on bad content. */
  applyBatch(stream: StreamRef, batch: EventBatch): void;
  /** Forget every claim of a stream (restart, unrecoverable gap, pod deleted): O(stream's entries). */
  dropStream(streamId: string): void;
  /**
   * For each stream with at least one matched block in the namespace, the number of leading
   * blocks of `tokenIds` (full blocks only) it holds. Streams with no match are omitted.
   */
  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[];
  /** What the index believes a stream holds, by engine hash. */
  streamBlocks(streamId: string): BlockClaim[];
  stats(): IndexStats;
  /** Number of entries (engine hashes) the index holds for a stream; 0 if unknown. */
  streamEntryCount?(streamId: string): number;
  /**
   * A stream's entries per tier (an entry on two tiers counts for both), written into `out`;
   * O(the stream's entries), for introspection (the dashboard), not the hot path.
   */
  streamTierCounts?(streamId: string, out: TierCounts): TierCounts;
  /** A hybrid stream's other KV-cache groups (empty for a stream without groups). */
  streamGroups?(streamId: string): GroupClaims[];
  /** A stream's entries for a peer's catch-up; null when the index does not know the stream. */
  exportStream?(streamId: string): StreamExport | null;
  /** Replace a stream's entries with an export; returns the entries loaded. */
  importStream?(ref: StreamRef, data: StreamExport): number;
}
