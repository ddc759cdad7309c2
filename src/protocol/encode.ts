/**
 * Encoder writing KV-event batches byte-for-byte as vLLM's msgspec encoder writes them, per era
 * (used by the mock engine and by tests). msgspec's choices, reproduced here:
 *  - floats always float64 (0xcb); ints in the smallest encoding (fixint, uint8..uint64 for
 *    non-negative values; negative fixint, int8..int64 for negative ones);
 *  - str: fixstr / str8 / str16 / str32; bytes: bin8 / bin16 / bin32; arrays and maps: fix /
 *    16 / 32 headers;
 *  - array-like structs (the batch always, events before July 2026) write every field in
 *    declaration order, trailing nils included; map-encoded events start with the "type" tag
 *    and omit fields equal to their default (None), fields without a default are always written.
 */
import { hashKind } from "./hash.ts";
import {
  BATCH_ORDER,
  F_BLOCK_SIZE,
  F_CACHE_SALT,
  F_DP_RANK,
  F_EVENTS,
  F_EXTRA,
  F_GROUP,
  F_HASHES,
  F_LOCALITY,
  F_LORA_ID,
  F_LORA_NAME,
  F_MEDIUM,
  F_PARENT,
  F_SPEC_KIND,
  F_SPEC_SW,
  F_TOKENS,
  F_TS,
  F_TYPE,
  FIELD_NAMES,
  REMOVED_FIRST_DEFAULTED,
  REMOVED_ORDER,
  STORED_FIRST_DEFAULTED,
  STORED_ORDER,
} from "./schema.ts";
import type { BlockRemoved, BlockStored, EventBatch, HashKey, KvEvent } from "./types.ts";

/**
 * Wire eras (named by the month of the vLLM commit whose bytes they reproduce). Each writes a
 * prefix of the field orders in schema.ts (`ERAS` below gives the lengths):
 *  - "2025-04" (vLLM 0be6d05b5): batch [ts, events]; array events; BlockStored up to lora_id,
 *      BlockRemoved block_hashes only; AllBlocksCleared [tag].
 *  - "2025-09" (82dfb12e5): + data_parallel_rank; BlockStored + medium; BlockRemoved + medium.
 *  - "2026-05" (bcb9c133b): BlockStored up to kv_cache_spec_sliding_window; BlockRemoved up to
 *      group_idx.
 *  - "2026-07" (48fc2e279): map events {"type": ...}; both up to locality; fields declared with
 *      a default (None) are left out when null, the others always written.
 * Event fields an era does not have are not written (an engine of that era did not know them).
 */
export type VllmEra = "2025-04" | "2025-09" | "2026-05" | "2026-07";
/**
 * Other engines' wire formats (docs/engines.md):
 *  - "sglang-2025": SGLang's first publisher with the attention-DP rank: batch
 *      [ts, events, attn_dp_rank]; BlockStored up to lora_id, BlockRemoved block_hashes only.
 *  - "sglang-2026": + medium on both; a salted BlockStored (BlockStoredWithMetadata) carries an
 *      8th element, the map {"cache_salt": str}, where vLLM writes lora_name.
 *  - "trtllm": Dynamo's TensorRT-LLM publisher (plain msgpack of Python dicts): batch
 *      [ts, events, attention_dp_rank]; map events in insertion order, BlockStored type,
 *      block_hashes, parent_block_hash, token_ids, block_size, then lora_name and cache_salt when
 *      set; BlockRemoved type, block_hashes; AllBlocksCleared type.
 */
export type EngineEra = "sglang-2025" | "sglang-2026" | "trtllm";
export type WireEra = VllmEra | EngineEra;
/** vLLM's eras (the ones vLLM's own decoder, and so every vLLM-only consumer, reads). */
export const WIRE_ERAS: readonly VllmEra[] = ["2025-04", "2025-09", "2026-05", "2026-07"];
export const ENGINE_ERAS: readonly EngineEra[] = ["sglang-2025", "sglang-2026", "trtllm"];

interface FieldSpec {
  name: string;
  /** Has a default (None) in the map era: omitted when null. */
  optional: boolean;
  write(w: Writer, ev: KvEvent): void;
  isNull(ev: KvEvent): boolean;
}

interface EraSpec {
  /** Fields of BATCH_ORDER written. */
  batchFields: number;
  mapEvents: boolean;
  /** array events: SGLang's trailing metadata map on a salted BlockStored */
  saltMetadata?: boolean;
  /** map events: TensorRT-LLM's top-level cache_salt after the fields */
  saltKey?: boolean;
  stored: FieldSpec[];
  removed: FieldSpec[];
}

const TWO32 = 0x1_0000_0000;
const TYPE_KEY = FIELD_NAMES[F_TYPE]!;

class Writer {
  buf: Buffer;
  pos = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.pos + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  typed(tag: number, v: number, size: 1 | 2 | 4): void {
    this.ensure(1 + size);
    const buf = this.buf;
    buf[this.pos] = tag;
    if (size === 1) buf[this.pos + 1] = v & 0xff;
    else if (size === 2) buf.writeUInt16BE(v & 0xffff, this.pos + 1);
    else buf.writeUInt32BE(v >>> 0, this.pos + 1);
    this.pos += 1 + size;
  }

  nil(): void {
    this.u8(0xc0);
  }

  f64(v: number): void {
    this.ensure(9);
    this.buf[this.pos] = 0xcb;
    this.buf.writeDoubleBE(v, this.pos + 1);
    this.pos += 9;
  }

  /** 64-bit value from two uint32 halves with tag 0xcf (uint64) or 0xd3 (int64). */
  u64(tag: number, hi: number, lo: number): void {
    this.ensure(9);
    this.buf[this.pos] = tag;
    this.buf.writeUInt32BE(hi >>> 0, this.pos + 1);
    this.buf.writeUInt32BE(lo >>> 0, this.pos + 5);
    this.pos += 9;
  }

  /** Safe integer in msgspec's smallest encoding. */
  int(v: number): void {
    if (v >= 0) {
      if (v < 0x80) this.u8(v);
      else if (v < 0x100) this.typed(0xcc, v, 1);
      else if (v < 0x10000) this.typed(0xcd, v, 2);
      else if (v < TWO32) this.typed(0xce, v, 4);
      else this.u64(0xcf, Math.floor(v / TWO32), v % TWO32);
    } else {
      if (v >= -32) this.u8(v & 0xff);
      else if (v >= -0x80) this.typed(0xd0, v, 1);
      else if (v >= -0x8000) this.typed(0xd1, v, 2);
      else if (v >= -0x80000000) this.typed(0xd2, v, 4);
      else {
        const hi = Math.floor(v / TWO32);
        this.u64(0xd3, hi, v - hi * TWO32);
      }
    }
  }

  bigint(v: bigint): void {
    if (v >= -(1n << 53n) && v <= 1n << 53n) {
      this.int(Number(v));
      return;
    }
    if (v < -(1n << 63n) || v >= 1n << 64n) throw new RangeError(`integer out of int64/uint64 range: ${v}`);
    const u = v < 0n ? v + (1n << 64n) : v;
    this.u64(v < 0n ? 0xd3 : 0xcf, Number(u >> 32n), Number(u & 0xffffffffn));
  }

  str(s: string): void {
    const n = Buffer.byteLength(s, "utf8");
    if (n < 32) this.u8(0xa0 | n);
    else if (n < 0x100) this.typed(0xd9, n, 1);
    else if (n < 0x10000) this.typed(0xda, n, 2);
    else this.typed(0xdb, n, 4);
    this.ensure(n);
    this.buf.write(s, this.pos, n, "utf8");
    this.pos += n;
  }

  binHeader(n: number): void {
    if (n < 0x100) this.typed(0xc4, n, 1);
    else if (n < 0x10000) this.typed(0xc5, n, 2);
    else this.typed(0xc6, n, 4);
  }

  bin(b: Uint8Array): void {
    this.binHeader(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  arrayHeader(n: number): void {
    if (n < 16) this.u8(0x90 | n);
    else if (n < 0x10000) this.typed(0xdc, n, 2);
    else this.typed(0xdd, n, 4);
  }

  mapHeader(n: number): void {
    if (n < 16) this.u8(0x80 | n);
    else if (n < 0x10000) this.typed(0xde, n, 2);
    else this.typed(0xdf, n, 4);
  }

  /** A HashKey as msgspec writes the Python value it stands for (int: smallest width; bytes: bin). */
  hash(key: HashKey): void {
    const kind = hashKind(key);
    if (kind === "bytes") {
      const n = key.length - 1;
      this.binHeader(n);
      this.ensure(n);
      this.buf.write(key.slice(1), this.pos, n, "latin1");
      this.pos += n;
      return;
    }
    const hi =
      ((key.charCodeAt(1) << 24) |
        (key.charCodeAt(2) << 16) |
        (key.charCodeAt(3) << 8) |
        key.charCodeAt(4)) >>>
      0;
    const lo =
      ((key.charCodeAt(5) << 24) |
        (key.charCodeAt(6) << 16) |
        (key.charCodeAt(7) << 8) |
        key.charCodeAt(8)) >>>
      0;
    if (kind === "uint") {
      if (hi === 0) this.int(lo);
      else this.u64(0xcf, hi, lo);
    } else if (hi === 0xffffffff && lo >= 0x80000000) {
      this.int(lo - TWO32);
    } else {
      this.u64(0xd3, hi, lo);
    }
  }

  hashOrNil(key: HashKey | null): void {
    if (key === null) this.nil();
    else this.hash(key);
  }

  intOrNil(v: number | null): void {
    if (v === null) this.nil();
    else this.int(v);
  }

  strOrNil(v: string | null): void {
    if (v === null) this.nil();
    else this.str(v);
  }

  /** Generic value (extra_keys): null, boolean, number, bigint, string, bytes, array, plain object. */
  value(v: unknown): void {
    if (v === null || v === undefined) this.nil();
    else if (typeof v === "boolean") this.u8(v ? 0xc3 : 0xc2);
    else if (typeof v === "number") {
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) this.int(v);
      else this.f64(v);
    } else if (typeof v === "bigint") this.bigint(v);
    else if (typeof v === "string") this.str(v);
    else if (v instanceof Uint8Array) this.bin(v);
    else if (Array.isArray(v)) {
      this.arrayHeader(v.length);
      for (const x of v) this.value(x);
    } else if (typeof v === "object") {
      const keys = Object.keys(v);
      this.mapHeader(keys.length);
      for (const k of keys) {
        this.str(k);
        this.value((v as Record<string, unknown>)[k]);
      }
    } else throw new TypeError(`cannot encode a ${typeof v} in extra_keys`);
  }

  finish(): Buffer {
    const out = this.buf.subarray(0, this.pos);
    // Don't let a mostly empty growth buffer stay referenced by a long-lived payload.
    return this.pos * 2 < this.buf.length ? Buffer.from(out) : out;
  }
}

const S = (ev: KvEvent) => ev as BlockStored;
const R = (ev: KvEvent) => ev as BlockRemoved;
const never = () => false;
type FieldWriter = Pick<FieldSpec, "write" | "isNull">;

/** How each BlockStored field is written, and when it is null (its default, if it has one). */
const STORED_WRITERS: Record<number, FieldWriter> = {
  [F_HASHES]: { write: (w, e) => writeHashes(w, S(e).blockHashes), isNull: never },
  [F_PARENT]: {
    write: (w, e) => w.hashOrNil(S(e).parentBlockHash),
    isNull: (e) => S(e).parentBlockHash === null,
  },
  [F_TOKENS]: {
    write: (w, e) => {
      const t = S(e).tokenIds;
      w.arrayHeader(t.length);
      for (let i = 0; i < t.length; i++) w.int(t[i]!);
    },
    isNull: never,
  },
  [F_BLOCK_SIZE]: { write: (w, e) => w.int(S(e).blockSize), isNull: never },
  [F_LORA_ID]: { write: (w, e) => w.intOrNil(S(e).loraId), isNull: (e) => S(e).loraId === null },
  [F_MEDIUM]: { write: (w, e) => w.strOrNil(S(e).medium), isNull: (e) => S(e).medium === null },
  [F_LORA_NAME]: { write: (w, e) => w.strOrNil(S(e).loraName), isNull: (e) => S(e).loraName === null },
  [F_EXTRA]: { write: (w, e) => w.value(S(e).extraKeys), isNull: (e) => S(e).extraKeys === null },
  [F_GROUP]: { write: (w, e) => w.intOrNil(S(e).groupIdx), isNull: (e) => S(e).groupIdx === null },
  [F_SPEC_KIND]: {
    write: (w, e) => w.strOrNil(S(e).kvCacheSpecKind),
    isNull: (e) => S(e).kvCacheSpecKind === null,
  },
  [F_SPEC_SW]: {
    write: (w, e) => w.intOrNil(S(e).kvCacheSpecSlidingWindow),
    isNull: (e) => S(e).kvCacheSpecSlidingWindow === null,
  },
  [F_LOCALITY]: { write: (w, e) => w.strOrNil(S(e).locality), isNull: (e) => S(e).locality === null },
};
/** How each BlockRemoved field is written, and when it is null. */
const REMOVED_WRITERS: Record<number, FieldWriter> = {
  [F_HASHES]: { write: (w, e) => writeHashes(w, R(e).blockHashes), isNull: never },
  [F_MEDIUM]: { write: (w, e) => w.strOrNil(R(e).medium), isNull: (e) => R(e).medium === null },
  [F_GROUP]: { write: (w, e) => w.intOrNil(R(e).groupIdx), isNull: (e) => R(e).groupIdx === null },
  [F_LOCALITY]: { write: (w, e) => w.strOrNil(R(e).locality), isNull: (e) => R(e).locality === null },
};

function writeHashes(w: Writer, hashes: HashKey[]): void {
  w.arrayHeader(hashes.length);
  for (let i = 0; i < hashes.length; i++) w.hash(hashes[i]!);
}

/** The first `count` fields of a schema order, as an era writes them. */
function fieldSpecs(
  order: readonly number[],
  firstDefaulted: number,
  count: number,
  writers: Record<number, FieldWriter>,
): FieldSpec[] {
  return order.slice(0, count).map((id, i) => ({
    name: FIELD_NAMES[id]!,
    optional: i >= firstDefaulted,
    ...writers[id]!,
  }));
}

/** An era: how many fields of each schema order it writes, and whether events are maps. */
function era(batchFields: number, mapEvents: boolean, storedFields: number, removedFields: number): EraSpec {
  return {
    batchFields,
    mapEvents,
    stored: fieldSpecs(STORED_ORDER, STORED_FIRST_DEFAULTED, storedFields, STORED_WRITERS),
    removed: fieldSpecs(REMOVED_ORDER, REMOVED_FIRST_DEFAULTED, removedFields, REMOVED_WRITERS),
  };
}

/** Dynamo's TensorRT-LLM publisher: vLLM's first five names minus lora_id, then lora_name. */
function trtllmEra(): EraSpec {
  const stored = fieldSpecs(STORED_ORDER, STORED_FIRST_DEFAULTED, STORED_ORDER.length, STORED_WRITERS).filter(
    (f) => ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_name"].includes(f.name),
  );
  for (const f of stored) f.optional = f.name === "lora_name";
  return { batchFields: 3, mapEvents: true, saltKey: true, stored, removed: [] };
}

const ERAS: Record<WireEra, EraSpec> = {
  "2025-04": era(2, false, 5, 1),
  "2025-09": era(3, false, 6, 2),
  "2026-05": era(3, false, 11, 3),
  "2026-07": era(3, true, 12, 4),
  "sglang-2025": era(3, false, 5, 1),
  "sglang-2026": { ...era(3, false, 6, 2), saltMetadata: true },
  trtllm: {
    ...trtllmEra(),
    removed: fieldSpecs(REMOVED_ORDER, REMOVED_FIRST_DEFAULTED, 1, REMOVED_WRITERS),
  },
};

/** Field names (wire, snake_case) an era writes for each event type, in wire order. */
export function eraFields(era: WireEra): { BlockStored: string[]; BlockRemoved: string[] } {
  const spec = ERAS[era];
  return { BlockStored: spec.stored.map((x) => x.name), BlockRemoved: spec.removed.map((x) => x.name) };
}

function writeEvent(w: Writer, ev: KvEvent, spec: EraSpec): void {
  const fields = ev.type === "BlockStored" ? spec.stored : ev.type === "BlockRemoved" ? spec.removed : [];
  if (spec.mapEvents) {
    let n = 1;
    for (const fs of fields) if (!fs.optional || !fs.isNull(ev)) n++;
    const salt = spec.saltKey && ev.type === "BlockStored" ? (ev.cacheSalt ?? null) : null;
    if (salt !== null) n++;
    w.mapHeader(n);
    w.str(TYPE_KEY);
    w.str(ev.type);
    for (const fs of fields) {
      if (fs.optional && fs.isNull(ev)) continue;
      w.str(fs.name);
      fs.write(w, ev);
    }
    if (salt !== null) {
      w.str(FIELD_NAMES[F_CACHE_SALT]!);
      w.str(salt);
    }
  } else {
    const salt = spec.saltMetadata && ev.type === "BlockStored" ? (ev.cacheSalt ?? null) : null;
    w.arrayHeader(1 + fields.length + (salt !== null ? 1 : 0));
    w.str(ev.type);
    for (const fs of fields) fs.write(w, ev);
    if (salt !== null) {
      // BlockStoredMetadata: a msgspec struct (not array-like), so a map of its one field
      w.mapHeader(1);
      w.str(FIELD_NAMES[F_CACHE_SALT]!);
      w.str(salt);
    }
  }
}

/** Encode a batch exactly as vLLM of the given era puts it on the wire. */
export function encodeBatch(batch: EventBatch, era: WireEra): Buffer {
  const spec = ERAS[era];
  if (spec === undefined) throw new RangeError(`unknown wire era: ${era}`);
  const w = new Writer(256);
  w.arrayHeader(spec.batchFields);
  for (let i = 0; i < spec.batchFields; i++) {
    const id = BATCH_ORDER[i];
    if (id === F_TS) w.f64(batch.ts);
    else if (id === F_EVENTS) {
      w.arrayHeader(batch.events.length);
      for (const ev of batch.events) writeEvent(w, ev, spec);
    } else if (id === F_DP_RANK) w.intOrNil(batch.dpRank);
  }
  return w.finish();
}
