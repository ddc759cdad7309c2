/** The decoder's limits (every length is checked against them before anything is allocated). */
import type { ReaderLimits } from "./msgpack-reader.ts";

export interface DecodeLimits extends ReaderLimits {
  /** Whole payload size. */
  maxPayloadBytes: number;
  /** Events in one batch (known and unknown). */
  maxEventsPerBatch: number;
  /** Entries of `block_hashes` in one event. */
  maxHashesPerEvent: number;
  /** Entries of `token_ids` in one event. */
  maxTokensPerEvent: number;
  /** Nesting depth of any container (the batch itself is depth 1). */
  maxDepth: number;
  /** Byte length of any string or byte string kept (medium, lora_name, extra_keys values...). */
  maxStringBytes: number;
  /** Byte length of a byte-string block hash. */
  maxHashBytes: number;
  /** Values (at any depth) inside one event's `extra_keys`. */
  maxExtraKeys: number;
  /** Entries of one map (batch map, event map, maps inside extra_keys or skipped values). */
  maxMapEntries: number;
}

export const DEFAULT_DECODE_LIMITS: Readonly<DecodeLimits> = Object.freeze({
  maxPayloadBytes: 64 * 1024 * 1024,
  maxEventsPerBatch: 100_000,
  maxHashesPerEvent: 65_536,
  maxTokensPerEvent: 1 << 20,
  maxDepth: 32,
  maxStringBytes: 64 * 1024,
  maxHashBytes: 64,
  maxExtraKeys: 65_536,
  maxMapEntries: 4096,
});

/** `limits` over the defaults (undefined fields keep the default). */
export function resolveLimits(limits: Partial<DecodeLimits> | undefined): DecodeLimits {
  if (limits === undefined) return DEFAULT_DECODE_LIMITS;
  const out = { ...DEFAULT_DECODE_LIMITS };
  for (const k of Object.keys(limits) as Array<keyof DecodeLimits>) {
    const v = limits[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}
