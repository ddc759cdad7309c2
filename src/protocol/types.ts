/**
 * Decoded KV-event types shared by every component (contract; see docs/architecture.md).
 *
 * Block hashes travel in memory as a `HashKey`: a short one-byte-per-char string that is
 * exact for every wire form (uint64, negative int64, 16/32-byte strings), cheap to hash
 * as a Map key and to compare, and built without BigInt. Its layout (see hash.ts):
 *   "u" + 8 chars (big-endian bytes of a non-negative integer < 2^64)
 *   "n" + 8 chars (big-endian two's complement of a negative integer >= -2^63)
 *   "b" + N chars (the raw bytes of a byte-string hash)
 * The canonical *text* form (APIs, logs, JSON) is decimal for integers and "0x" + lowercase
 * hex for byte strings: `hashToText` / `hashFromText` in hash.ts.
 */
export type HashKey = string;

export type Tier = "GPU" | "CPU" | "STORAGE";

export interface BlockStored {
  type: "BlockStored";
  blockHashes: HashKey[];
  parentBlockHash: HashKey | null;
  /** All tokens of the event's blocks, blockHashes.length * blockSize for full blocks; may be empty (offload tiers). */
  tokenIds: number[];
  blockSize: number;
  loraId: number | null;
  /** "GPU" | "CPU" | "STORAGE" | other strings a newer engine may send; null = GPU (old versions). */
  medium: string | null;
  loraName: string | null;
  extraKeys: unknown[] | null;
  groupIdx: number | null;
  kvCacheSpecKind: string | null;
  kvCacheSpecSlidingWindow: number | null;
  locality: string | null;
  /**
   * Cache salt sent beside the blocks (absent from vLLM, which puts it in `extraKeys`): SGLang's
   * `metadata` map (an 8th array element) and TensorRT-LLM's top-level `cache_salt` key. The
   * property is present only when the wire carried one.
   */
  cacheSalt?: string | null;
}

export interface BlockRemoved {
  type: "BlockRemoved";
  blockHashes: HashKey[];
  medium: string | null;
  groupIdx: number | null;
  locality: string | null;
}

export interface AllBlocksCleared {
  type: "AllBlocksCleared";
}

export type KvEvent = BlockStored | BlockRemoved | AllBlocksCleared;

export interface EventBatch {
  ts: number;
  events: KvEvent[];
  /** data_parallel_rank; null when the batch has no third field. */
  dpRank: number | null;
  /**
   * Set by the decoder: whether a BlockStored of the batch needs the KV-cache group layer
   * (`needsGroupLayer`). It lets the index pass a plain batch through without looking at its
   * events; absent on a hand-built batch, for which the index looks itself.
   */
  hybrid?: boolean;
}

/** One PUB message after framing: `[topic, seq(8B BE), payload]`. */
export interface PubMessage {
  topic: string;
  /** seq as a JS number: exact below 2^53, which a counter starting at 0 never leaves. */
  seq: number;
  payload: Uint8Array;
}

/**
 * Normalise a wire medium string to a tier; unknown storage-like names map to STORAGE. SGLang
 * names its host tier "CPU_PINNED" (and "DISK" / "EXTERNAL" below it).
 */
export function tierOf(medium: string | null): Tier {
  if (medium === null || medium === "GPU") return "GPU";
  if (medium === "CPU" || medium === "CPU_PINNED") return "CPU";
  return "STORAGE";
}
