/**
 * Slow, obviously-correct reference decoder for the property tests: msgpackr (BigInt for every
 * 64-bit int) builds the plain object tree, then a straightforward interpretation maps it to an
 * EventBatch. Used as the oracle for `decodeBatch`.
 */
import { addExtension, Unpackr } from "msgpackr";
import { hashFromBigInt, hashFromBytes, hashFromInt } from "../../../src/protocol/hash.ts";
import type { EventBatch, HashKey, KvEvent } from "../../../src/protocol/types.ts";

// msgpack ext values mean nothing in this protocol (decodeBatch skips them, by their length, in
// fields it does not know). msgpackr gives some ext types meanings of its own: 0x65 reads an
// Error from the bytes that follow the ext, 0x42 is a BigInt, 0xff a timestamp, 0x69 / 0x70
// structured-clone references... and then disagrees with any reader of the spec. So every type is
// opaque here (msgpackr's extension table is module-wide; only tests unpack with msgpackr).
for (let type = 0; type < 256; type++)
  addExtension({ type, unpack: (data: Uint8Array) => ({ ext: type, bytes: Uint8Array.from(data) }) });

const unpackr = new Unpackr({
  int64AsType: "bigint",
  useRecords: false,
  mapsAsObjects: false,
  moreTypes: false,
});

function hashOf(v: unknown): HashKey {
  if (typeof v === "bigint") return hashFromBigInt(v);
  if (typeof v === "number") return hashFromInt(v);
  if (v instanceof Uint8Array) return hashFromBytes(v);
  throw new Error(`bad hash ${String(v)}`);
}
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
const str = (v: unknown): string | null => (v === null || v === undefined ? null : (v as string));

/** msgpack maps arrive as Map (any key type); struct and extra_keys maps need string keys. */
function obj(v: unknown): Record<string, unknown> {
  if (!(v instanceof Map)) return v as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [k, x] of v) {
    if (typeof k !== "string") throw new Error("non-string map key");
    Object.defineProperty(out, k, { value: x, enumerable: true, writable: true });
  }
  return out;
}

/** Normalise generic values like decodeBatch does: bigints within 2^53 → numbers, bins → Uint8Array. */
function generic(v: unknown): unknown {
  if (typeof v === "bigint") return v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v;
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (Array.isArray(v)) return v.map(generic);
  if (v instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(obj(v)))
      Object.defineProperty(out, k, { value: generic(x), enumerable: true, writable: true });
    return out;
  }
  return v;
}

const STORED = [
  "block_hashes",
  "parent_block_hash",
  "token_ids",
  "block_size",
  "lora_id",
  "medium",
  "lora_name",
  "extra_keys",
  "group_idx",
  "kv_cache_spec_kind",
  "kv_cache_spec_sliding_window",
  "locality",
];
const REMOVED = ["block_hashes", "medium", "group_idx", "locality"];

function event(raw: unknown): KvEvent | null {
  let type: string;
  let f: Record<string, unknown>;
  if (Array.isArray(raw)) {
    type = raw[0] as string;
    const names = type === "BlockStored" ? STORED : type === "BlockRemoved" ? REMOVED : [];
    f = {};
    names.forEach((n, i) => {
      if (i + 1 < raw.length) f[n] = raw[i + 1];
    });
  } else {
    f = obj(raw);
    type = f.type as string;
  }
  if (type === "BlockStored") {
    return {
      type,
      blockHashes: (f.block_hashes as unknown[]).map(hashOf),
      parentBlockHash: f.parent_block_hash == null ? null : hashOf(f.parent_block_hash),
      tokenIds: (f.token_ids as unknown[]).map(Number),
      blockSize: Number(f.block_size),
      loraId: num(f.lora_id),
      medium: str(f.medium),
      loraName: str(f.lora_name),
      extraKeys: f.extra_keys == null ? null : (generic(f.extra_keys) as unknown[]),
      groupIdx: num(f.group_idx),
      kvCacheSpecKind: str(f.kv_cache_spec_kind),
      kvCacheSpecSlidingWindow: num(f.kv_cache_spec_sliding_window),
      locality: str(f.locality),
    };
  }
  if (type === "BlockRemoved") {
    return {
      type,
      blockHashes: (f.block_hashes as unknown[]).map(hashOf),
      medium: str(f.medium),
      groupIdx: num(f.group_idx),
      locality: str(f.locality),
    };
  }
  if (type === "AllBlocksCleared") return { type };
  return null;
}

/** Full-attention kinds as vLLM names them (FullAttentionSpec and its subclasses). */
const FULL = ["full_attention", "mla_attention", "sink_full_attention"];

/**
 * A batch as the decoder gives it: with `hybrid`, which this oracle derives on its own: a
 * BlockStored with a kind, for a group other than 0 or of a kind other than full attention.
 */
export function asDecoded(b: Pick<EventBatch, "ts" | "events" | "dpRank">): EventBatch {
  const hybrid = b.events.some(
    (e) =>
      e.type === "BlockStored" &&
      e.kvCacheSpecKind !== null &&
      ((e.groupIdx !== null && e.groupIdx !== 0) || !FULL.includes(e.kvCacheSpecKind)),
  );
  return { ts: b.ts, events: b.events, dpRank: b.dpRank, hybrid };
}

export function referenceDecode(payload: Uint8Array): EventBatch {
  const raw = unpackr.unpack(payload) as unknown;
  let ts: unknown;
  let events: unknown[];
  let dp: unknown = null;
  if (Array.isArray(raw)) {
    [ts, events, dp] = raw as [unknown, unknown[], unknown];
  } else {
    const m = obj(raw);
    ts = m.ts;
    events = m.events as unknown[];
    dp = m.data_parallel_rank;
  }
  return asDecoded({
    ts: Number(ts),
    events: events.map(event).filter((e): e is KvEvent => e !== null),
    dpRank: num(dp),
  });
}

export function rawUnpack(payload: Uint8Array): unknown {
  return unpackr.unpack(payload);
}
