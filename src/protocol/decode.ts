/**
 * Schema-aware decoder of vLLM KV-event batches (every era: array or map events, int or bytes
 * hashes), reading through the bounded msgpack cursor of msgpack-reader.ts.
 *
 * Why hand-written rather than msgpackr + a schema pass over the resulting objects:
 *  - exactness without BigInt: block hashes are uint64 (often >= 2^63) or negative int64; a
 *    general decoder either rounds them to doubles or (with int64AsType "bigint") allocates a
 *    BigInt per hash. Here the 8 wire bytes become the HashKey directly: "u"/"n" and the 8
 *    bytes as one 9-char string.
 *  - limits before allocation: every array/map/str/bin length is checked against `DecodeLimits`
 *    and against the bytes that remain before anything is allocated, so a 5-byte frame claiming
 *    2^32 events costs nothing. msgpackr allocates first and only lets us validate afterwards.
 *  - one pass, no intermediate object graph: event objects are built straight from the buffer,
 *    map keys are matched as bytes (no string per key), unknown keys/values are skipped without
 *    materialising them, and "GPU"/"CPU" media are interned.
 *  - bounded everything: recursion only through `skipValue`/`value` with a depth limit, every
 *    loop consumes >= 1 byte per iteration, so random input ends in a ProtocolError quickly.
 * msgpackr stays the baseline in bench/protocol.bench.ts and the oracle in the property tests.
 */

import { type DecodeLimits, resolveLimits } from "./decode-limits.ts";
import { ProtocolError } from "./errors.ts";
import { hashFromInt64NegParts, hashFromUint64Parts } from "./hash.ts";
import { internTable, keyTable, MsgpackReader, malformed, overLimit } from "./msgpack-reader.ts";
import {
  BATCH_ORDER,
  EVENT_TYPES,
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
  F_METADATA,
  F_MM_INFOS,
  F_PARENT,
  F_SPEC_KIND,
  F_SPEC_SW,
  F_TOKENS,
  F_TS,
  F_TYPE,
  FIELD_NAMES,
  needsGroupLayer,
  REMOVED_ORDER,
  STORED_EXTRA_KEYS,
  STORED_ORDER,
  T_CLEARED,
  T_STORED,
} from "./schema.ts";
import type { AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, HashKey, KvEvent } from "./types.ts";

export { DEFAULT_DECODE_LIMITS, type DecodeLimits } from "./decode-limits.ts";

export interface DecodeResult {
  batch: EventBatch;
  /** Events of a type this decoder does not know (skipped). */
  unknownEvents: number;
  /** Map keys / trailing array fields this decoder does not know (skipped). */
  unknownKeys: number;
}

interface Latin1Sliceable {
  latin1Slice(start: number, end: number): string;
}
/** Bytes as a one-char-per-byte string; local (not imported) so the hot path has no module getter. */
const latin1: (buf: Buffer, start: number, end: number) => string =
  typeof (Buffer.prototype as unknown as Partial<Latin1Sliceable>).latin1Slice === "function"
    ? (buf, start, end) => (buf as unknown as Latin1Sliceable).latin1Slice(start, end)
    : (buf, start, end) => buf.toString("latin1", start, end);

/**
 * A "u"/"n" HashKey from its kind char and the 8 hash bytes at buf[p..p+8): one 9-char string
 * built in one step (4x faster than a latin1 slice plus a concatenation, measured: ~17 vs ~70 ns).
 */
function key9(kind: number, buf: Buffer, p: number): HashKey {
  return String.fromCharCode(
    kind,
    buf[p]!,
    buf[p + 1]!,
    buf[p + 2]!,
    buf[p + 3]!,
    buf[p + 4]!,
    buf[p + 5]!,
    buf[p + 6]!,
    buf[p + 7]!,
  );
}

/** Media strings shared instead of allocated per event. */
const MEDIA = internTable(["GPU", "CPU", "STORAGE"]);

const named = (ids: readonly number[]) => ids.map((id): [string, number] => [FIELD_NAMES[id]!, id]);
/** Map keys of events: the tag and the fields of every event type (a field has one id in all). */
const EVENT_KEY_TABLE = keyTable(
  named([F_TYPE, ...new Set([...STORED_ORDER, ...REMOVED_ORDER]), ...STORED_EXTRA_KEYS]),
);
/** Keys of SGLang's BlockStoredMetadata map. */
const METADATA_KEY_TABLE = keyTable(named([F_CACHE_SALT]));
const BATCH_KEY_TABLE = keyTable(named(BATCH_ORDER));
const TYPE_TABLE = keyTable(EVENT_TYPES);

function newStored(): BlockStored {
  return {
    type: "BlockStored",
    blockHashes: [],
    parentBlockHash: null,
    tokenIds: [],
    blockSize: 0,
    loraId: null,
    medium: null,
    loraName: null,
    extraKeys: null,
    groupIdx: null,
    kvCacheSpecKind: null,
    kvCacheSpecSlidingWindow: null,
    locality: null,
  };
}
function newRemoved(): BlockRemoved {
  return { type: "BlockRemoved", blockHashes: [], medium: null, groupIdx: null, locality: null };
}
const CLEARED: AllBlocksCleared = Object.freeze({ type: "AllBlocksCleared" }) as AllBlocksCleared;

/** The vLLM KV-event schema read through the bounded msgpack cursor. */
class KvEventReader extends MsgpackReader<DecodeLimits> {
  unknownEvents = 0;
  /** a BlockStored needs the index's group layer (EventBatch.hybrid) */
  hybrid = false;
  unknownKeys = 0;

  /** One block hash: msgpack int of any width or bin → HashKey. */
  hash(): HashKey {
    this.need(1);
    const buf = this.buf;
    const p = this.pos;
    const b = buf[p]!;
    if (b <= 0x7f) {
      this.pos = p + 1;
      return hashFromUint64Parts(0, b);
    }
    if (b >= 0xe0) {
      this.pos = p + 1;
      return hashFromInt64NegParts(0xffffffff, (b - 256) >>> 0);
    }
    switch (b) {
      case 0xcf:
        this.need(9);
        this.pos = p + 9;
        return key9(0x75, buf, p + 1);
      case 0xd3:
        this.need(9);
        this.pos = p + 9;
        return key9(buf[p + 1]! & 0x80 ? 0x6e : 0x75, buf, p + 1);
      case 0xcc:
        this.need(2);
        this.pos = p + 2;
        return hashFromUint64Parts(0, buf[p + 1]!);
      case 0xcd:
        this.need(3);
        this.pos = p + 3;
        return hashFromUint64Parts(0, (buf[p + 1]! << 8) | buf[p + 2]!);
      case 0xce:
        this.need(5);
        this.pos = p + 5;
        return hashFromUint64Parts(0, buf.readUInt32BE(p + 1));
      case 0xd0:
      case 0xd1:
      case 0xd2: {
        const v = this.int("block hash");
        return v >= 0 ? hashFromUint64Parts(0, v) : hashFromInt64NegParts(0xffffffff, v >>> 0);
      }
      case 0xc4:
      case 0xc5:
      case 0xc6: {
        const n = this.binHeader();
        if (n > this.lim.maxHashBytes) overLimit("maxHashBytes", n, this.lim.maxHashBytes);
        if (n === 0) this.bad("block hash: empty byte string");
        return `b${latin1(buf, this.strStart, this.strStart + n)}`;
      }
    }
    return this.bad(`block hash: expected int or bytes, got type byte 0x${b.toString(16)}`);
  }

  hashOrNil(): HashKey | null {
    return this.nil() ? null : this.hash();
  }

  hashList(): HashKey[] {
    const n = this.arrayHeader();
    if (n < 0) this.bad("block_hashes: expected an array");
    if (n > this.lim.maxHashesPerEvent) overLimit("maxHashesPerEvent", n, this.lim.maxHashesPerEvent);
    this.fits(n);
    const out: HashKey[] = new Array(n); // n <= limit and <= remaining bytes (checked above)
    for (let i = 0; i < n; i++) out[i] = this.hash();
    return out;
  }

  tokens(): number[] {
    const n = this.arrayHeader();
    if (n < 0) this.bad("token_ids: expected an array");
    if (n > this.lim.maxTokensPerEvent) overLimit("maxTokensPerEvent", n, this.lim.maxTokensPerEvent);
    this.fits(n);
    return this.ints(n, "token_ids");
  }

  extraKeys(depth: number): unknown[] | null {
    if (this.nil()) return null;
    this.startValues(this.lim.maxExtraKeys, "maxExtraKeys");
    const v = this.value(depth, "extra_keys");
    if (!Array.isArray(v)) this.bad("extra_keys: expected an array or nil");
    return v;
  }

  /** True when the next value is a map (without consuming it). */
  atMap(): boolean {
    this.need(1);
    const b = this.buf[this.pos]!;
    return (b >= 0x80 && b <= 0x8f) || b === 0xde || b === 0xdf;
  }

  /**
   * SGLang's BlockStoredWithMetadata.metadata: a map whose known key is `cache_salt`; other keys
   * are skipped and counted. A nil salt leaves the event unsalted.
   */
  metadata(s: BlockStored, depth: number): void {
    if (this.nil()) return;
    const n = this.mapHeader();
    if (n < 0) this.bad("metadata: expected a map or nil");
    for (let i = 0; i < n; i++) {
      if (this.match(METADATA_KEY_TABLE, this.key()) === F_CACHE_SALT) {
        s.cacheSalt = this.strOrNil("metadata.cache_salt", MEDIA);
      } else {
        this.unknownKeys++;
        this.skipValue(depth + 1);
      }
    }
  }

  /** Read the value of event field `key` into `ev` (fields of the wrong event type are unknown). */
  field(ev: BlockStored | BlockRemoved, type: number, key: number, depth: number): number {
    if (type === T_STORED) {
      const s = ev as BlockStored;
      switch (key) {
        case F_HASHES:
          s.blockHashes = this.hashList();
          return 1;
        case F_PARENT:
          s.parentBlockHash = this.hashOrNil();
          return 0;
        case F_TOKENS:
          s.tokenIds = this.tokens();
          return 2;
        case F_BLOCK_SIZE:
          s.blockSize = this.int("block_size");
          if (s.blockSize <= 0) this.bad("block_size must be positive");
          return 4;
        case F_LORA_ID:
          s.loraId = this.intOrNil("lora_id");
          return 0;
        case F_MEDIUM:
          s.medium = this.strOrNil("medium", MEDIA);
          return 0;
        case F_LORA_NAME:
          // SGLang writes its metadata map where vLLM (since Dec 2025) writes lora_name: the
          // 8th element of a salted BlockStored. A map is never a lora_name, so the type decides.
          if (this.atMap()) this.metadata(s, depth);
          else s.loraName = this.strOrNil("lora_name", MEDIA);
          return 0;
        case F_CACHE_SALT:
          s.cacheSalt = this.strOrNil("cache_salt", MEDIA);
          return 0;
        case F_METADATA:
          this.metadata(s, depth);
          return 0;
        case F_MM_INFOS: {
          // per-block multimodal info: kept as extra keys, which leaves the blocks unmatchable
          // from token ids (the index's rule for any multimodal content)
          this.startValues(this.lim.maxExtraKeys, "maxExtraKeys");
          const v = this.value(depth, "block_mm_infos");
          if (v !== null && !Array.isArray(v)) this.bad("block_mm_infos: expected an array or nil");
          if (v !== null) s.extraKeys = v as unknown[];
          return 0;
        }
        case F_EXTRA:
          s.extraKeys = this.extraKeys(depth);
          return 0;
        case F_GROUP:
          s.groupIdx = this.intOrNil("group_idx");
          return 0;
        case F_SPEC_KIND:
          s.kvCacheSpecKind = this.strOrNil("kv_cache_spec_kind", MEDIA);
          return 0;
        case F_SPEC_SW:
          s.kvCacheSpecSlidingWindow = this.intOrNil("kv_cache_spec_sliding_window");
          return 0;
        case F_LOCALITY:
          s.locality = this.strOrNil("locality", MEDIA);
          return 0;
      }
    } else {
      const r = ev as BlockRemoved;
      switch (key) {
        case F_HASHES:
          r.blockHashes = this.hashList();
          return 1;
        case F_MEDIUM:
          r.medium = this.strOrNil("medium", MEDIA);
          return 0;
        case F_GROUP:
          r.groupIdx = this.intOrNil("group_idx");
          return 0;
        case F_LOCALITY:
          r.locality = this.strOrNil("locality", MEDIA);
          return 0;
      }
    }
    this.unknownKeys++;
    this.skipValue(depth);
    return 0;
  }

  /** Read a type tag string; returns T_* or 0 for an unknown type. */
  typeTag(): number {
    const n = this.strHeader();
    if (n < 0) this.bad("event type: expected a string");
    return this.match(TYPE_TABLE, n);
  }

  /** One event (array or map form); null for an unknown event type (skipped and counted). */
  event(depth: number): KvEvent | null {
    let n = this.arrayHeader();
    if (n >= 0) {
      if (n === 0) this.bad("event: empty array");
      this.fits(n);
      const type = this.typeTag();
      if (type === 0 || type === T_CLEARED) {
        for (let i = 1; i < n; i++) {
          if (type === T_CLEARED) this.unknownKeys++;
          this.skipValue(depth + 1);
        }
        if (type === 0) {
          this.unknownEvents++;
          return null;
        }
        return CLEARED;
      }
      const order = type === T_STORED ? STORED_ORDER : REMOVED_ORDER;
      const min = type === T_STORED ? 5 : 2;
      if (n < min) this.bad(`${type === T_STORED ? "BlockStored" : "BlockRemoved"}: only ${n - 1} fields`);
      const ev = type === T_STORED ? newStored() : newRemoved();
      for (let i = 1; i < n; i++) {
        if (i <= order.length) this.field(ev, type, order[i - 1]!, depth + 1);
        else {
          this.unknownKeys++;
          this.skipValue(depth + 1);
        }
      }
      return ev;
    }
    n = this.mapHeader();
    if (n < 0) this.bad("event: expected an array or a map");
    const start = this.pos;
    // Find the "type" tag. msgspec writes it first: then carry on from there; if it is elsewhere,
    // come back to the first entry afterwards.
    let type = -1;
    let from = 0;
    for (let i = 0; i < n; i++) {
      const kl = this.key();
      if (this.match(EVENT_KEY_TABLE, kl) === F_TYPE) {
        type = this.typeTag();
        if (i === 0) from = 1;
        else this.pos = start;
        break;
      }
      this.skipValue(depth + 1);
    }
    if (type < 0) this.bad("event map without a string 'type' key");
    if (type === 0 || type === T_CLEARED) {
      for (let i = from; i < n; i++) {
        const key = this.match(EVENT_KEY_TABLE, this.key());
        if (key !== F_TYPE && type === T_CLEARED) this.unknownKeys++;
        this.skipValue(depth + 1);
      }
      if (type === 0) {
        this.unknownEvents++;
        return null;
      }
      return CLEARED;
    }
    const ev = type === T_STORED ? newStored() : newRemoved();
    let seen = 0;
    for (let i = from; i < n; i++) {
      const key = this.match(EVENT_KEY_TABLE, this.key());
      if (key === F_TYPE) {
        this.skipValue(depth + 1);
        continue;
      }
      seen |= this.field(ev, type, key, depth + 1);
    }
    const required = type === T_STORED ? 7 : 1;
    if ((seen & required) !== required) {
      this.bad(`${type === T_STORED ? "BlockStored" : "BlockRemoved"}: missing required field`);
    }
    return ev;
  }

  events(depth: number): KvEvent[] {
    const n = this.arrayHeader();
    if (n < 0) this.bad("events: expected an array");
    if (n > this.lim.maxEventsPerBatch) overLimit("maxEventsPerBatch", n, this.lim.maxEventsPerBatch);
    this.fits(n);
    const out: KvEvent[] = [];
    for (let i = 0; i < n; i++) {
      const ev = this.event(depth + 1);
      if (ev === null) continue;
      out.push(ev);
      if (ev.type === "BlockStored" && ev.kvCacheSpecKind !== null && needsGroupLayer(ev)) this.hybrid = true;
    }
    return out;
  }

  /** The batch: positional (BATCH_ORDER, every era) or a map of the same fields. */
  batch(): EventBatch {
    let n = this.arrayHeader();
    const positional = n >= 0;
    if (positional) {
      if (n < 2) this.bad(`batch: expected [ts, events, dp_rank?], got ${n} items`);
      this.fits(n);
    } else {
      n = this.mapHeader();
      if (n < 0) this.bad("batch: expected an array or a map");
    }
    let ts: number | null = null;
    let events: KvEvent[] | null = null;
    let dpRank: number | null = null;
    for (let i = 0; i < n; i++) {
      const key = positional
        ? i < BATCH_ORDER.length
          ? BATCH_ORDER[i]!
          : 0
        : this.match(BATCH_KEY_TABLE, this.key());
      if (key === F_TS) ts = this.float("ts");
      else if (key === F_EVENTS) events = this.events(2);
      else if (key === F_DP_RANK) dpRank = this.intOrNil("data_parallel_rank");
      else {
        this.unknownKeys++;
        this.skipValue(2);
      }
    }
    if (ts === null || events === null) this.bad("batch map without 'ts' or 'events'");
    return { ts, events, dpRank, hybrid: this.hybrid };
  }
}

/**
 * Decode one vLLM KV-event batch payload (any era). Throws only ProtocolError:
 * malformed_msgpack (not msgpack / truncated / trailing bytes), bad_schema (valid msgpack, wrong
 * shape), limit_exceeded (`err.limit` names the DecodeLimits field).
 */
export function decodeBatch(payload: Uint8Array, limits?: Partial<DecodeLimits>): DecodeResult {
  const lim = resolveLimits(limits);
  if (payload.length > lim.maxPayloadBytes) overLimit("maxPayloadBytes", payload.length, lim.maxPayloadBytes);
  if (payload.length === 0) malformed("empty payload");
  const buf = Buffer.isBuffer(payload)
    ? payload
    : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const r = new KvEventReader(buf, lim);
  let batch: EventBatch;
  try {
    batch = r.batch();
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    // Safety net: any other exception is a decoder bug; never let it escape as a non-protocol error.
    throw new ProtocolError(
      "malformed_msgpack",
      `internal decoder error: ${(e as Error).message}`,
      undefined,
      {
        cause: e,
      },
    );
  }
  if (r.pos !== r.end) malformed(`${r.end - r.pos} trailing bytes after the batch`);
  return { batch, unknownEvents: r.unknownEvents, unknownKeys: r.unknownKeys };
}
