/**
 * The vLLM KV-event wire schema, once: event type tags, field names, and the positional order of
 * every msgspec struct (the batch, and the events in their array form). decode.ts matches names
 * and walks orders from here; encode.ts writes the same names in the same orders.
 *
 * Field ids are small non-zero integers so the decoder can switch on them (0 = unknown field).
 * Orders are the full, newest declaration order; an older engine wrote a prefix of it (the
 * eras in encode.ts say how long), so one order serves every era.
 */

import type { KvEvent } from "./types.ts";

// Field ids, shared by all structs (an event field keeps its id in every event type).
export const F_TYPE = 1;
export const F_HASHES = 2;
export const F_PARENT = 3;
export const F_TOKENS = 4;
export const F_BLOCK_SIZE = 5;
export const F_LORA_ID = 6;
export const F_MEDIUM = 7;
export const F_LORA_NAME = 8;
export const F_EXTRA = 9;
export const F_GROUP = 10;
export const F_SPEC_KIND = 11;
export const F_SPEC_SW = 12;
export const F_LOCALITY = 13;
export const F_TS = 14;
export const F_EVENTS = 15;
export const F_DP_RANK = 16;
/** Not vLLM's: TensorRT-LLM's (Dynamo publisher) top-level salt key. */
export const F_CACHE_SALT = 17;
/** Not vLLM's: SGLang's `BlockStoredWithMetadata.metadata` ({"cache_salt": str}) by name. */
export const F_METADATA = 18;
/** Not vLLM's: TensorRT-LLM's (Dynamo publisher) per-block multimodal info. */
export const F_MM_INFOS = 19;

/** Wire (snake_case) name of each field id. */
export const FIELD_NAMES: Readonly<Record<number, string>> = {
  [F_TYPE]: "type",
  [F_HASHES]: "block_hashes",
  [F_PARENT]: "parent_block_hash",
  [F_TOKENS]: "token_ids",
  [F_BLOCK_SIZE]: "block_size",
  [F_LORA_ID]: "lora_id",
  [F_MEDIUM]: "medium",
  [F_LORA_NAME]: "lora_name",
  [F_EXTRA]: "extra_keys",
  [F_GROUP]: "group_idx",
  [F_SPEC_KIND]: "kv_cache_spec_kind",
  [F_SPEC_SW]: "kv_cache_spec_sliding_window",
  [F_LOCALITY]: "locality",
  [F_TS]: "ts",
  [F_EVENTS]: "events",
  [F_DP_RANK]: "data_parallel_rank",
  [F_CACHE_SALT]: "cache_salt",
  [F_METADATA]: "metadata",
  [F_MM_INFOS]: "block_mm_infos",
};

/** Map-form BlockStored keys other engines add to vLLM's fields (decoded by name only). */
export const STORED_EXTRA_KEYS: readonly number[] = [F_CACHE_SALT, F_METADATA, F_MM_INFOS];

/** EventBatch: [ts, events, data_parallel_rank] (the rank since 2025-09). */
export const BATCH_ORDER: readonly number[] = [F_TS, F_EVENTS, F_DP_RANK];

/** BlockStored fields after the type tag, in declaration order. */
export const STORED_ORDER: readonly number[] = [
  F_HASHES,
  F_PARENT,
  F_TOKENS,
  F_BLOCK_SIZE,
  F_LORA_ID,
  F_MEDIUM,
  F_LORA_NAME,
  F_EXTRA,
  F_GROUP,
  F_SPEC_KIND,
  F_SPEC_SW,
  F_LOCALITY,
];
/** BlockRemoved fields after the type tag, in declaration order. */
export const REMOVED_ORDER: readonly number[] = [F_HASHES, F_MEDIUM, F_GROUP, F_LOCALITY];

/**
 * Index in the order of the first field declared with a default (None); msgspec requires every
 * later field to have one too. Map-encoded events omit such a field when it equals its default.
 */
export const STORED_FIRST_DEFAULTED = STORED_ORDER.indexOf(F_EXTRA);
export const REMOVED_FIRST_DEFAULTED = REMOVED_ORDER.indexOf(F_GROUP);

// Event types: the wire tag is the same string as the decoded event's `type`.
export const T_STORED = 1;
export const T_REMOVED = 2;
export const T_CLEARED = 3;
export const EVENT_TYPES: ReadonlyArray<readonly [string, number]> = [
  ["BlockStored", T_STORED],
  ["BlockRemoved", T_REMOVED],
  ["AllBlocksCleared", T_CLEARED],
];

/** vLLM's KVCacheSpecKind values of FullAttentionSpec and its subclasses. */
export const FULL_ATTENTION_KINDS: ReadonlySet<string> = new Set([
  "full_attention",
  "mla_attention",
  "sink_full_attention",
]);

/**
 * Whether an event shows a hybrid cache layout (the index's KV-cache group layer, groups.ts):
 * a BlockStored that names a kind for a group other than 0, or a kind other than full
 * attention. Events with a group but no kind (vLLM's April 2026 era) do not: group 0 is followed
 * and the others ignored, as before kinds were sent.
 */
export function needsGroupLayer(ev: KvEvent): boolean {
  if (ev === null || typeof ev !== "object" || ev.type !== "BlockStored") return false;
  const k = ev.kvCacheSpecKind;
  if (k === null || k === undefined) return false;
  const g = ev.groupIdx;
  return (typeof g === "number" && g !== 0) || !FULL_ATTENTION_KINDS.has(k);
}
