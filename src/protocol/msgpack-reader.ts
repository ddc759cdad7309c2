/**
 * A bounded msgpack cursor over one buffer: knows msgpack, not the vLLM schema (decode.ts extends it).
 * A cursor, not a value decoder: the caller reads exactly the shape it expects, so nothing is
 * allocated for values it does not keep; every length is checked before anything is allocated.
 *  - headers (`arrayHeader`, `mapHeader`, `strHeader`, `binHeader`) return -1 and consume nothing
 *    when the value is of another type, so a caller can try the forms it accepts in turn;
 *  - strings are matched as bytes against a `KeyTable` (no string built per map key);
 *  - `skipValue` skips any value, `value` materialises one within a budget; both bound depth;
 *  - every loop consumes >= 1 byte per iteration, so random input ends in a ProtocolError quickly.
 * Errors: only ProtocolError (malformed_msgpack, bad_schema for a wrong type, limit_exceeded).
 */
import { ProtocolError } from "./errors.ts";

/** The limits the reader itself enforces (a schema on top adds its own). */
export interface ReaderLimits {
  /** Nesting depth of any container (the outermost value is depth 1). */
  maxDepth: number;
  /** Byte length of any string or byte string kept. */
  maxStringBytes: number;
  /** Entries of one map. */
  maxMapEntries: number;
}

const TWO32 = 0x1_0000_0000;

/** Whole size (type byte included) of the fixed-size types skipValue meets: numbers and fixext. */
const FIXED_SIZE = new Uint8Array(256);
for (const [size, types] of [
  [2, [0xcc, 0xd0]],
  [3, [0xcd, 0xd1, 0xd4]],
  [4, [0xd5]],
  [5, [0xce, 0xd2, 0xca]],
  [6, [0xd6]],
  [9, [0xcf, 0xd3, 0xcb]],
  [10, [0xd7]],
  [18, [0xd8]],
] as const) {
  for (const t of types) FIXED_SIZE[t] = size;
}

export function malformed(msg: string): never {
  throw new ProtocolError("malformed_msgpack", msg);
}
export function schema(msg: string): never {
  throw new ProtocolError("bad_schema", msg);
}
/** `limit` names the limits field (reported as `ProtocolError.limit`). */
export function overLimit(limit: string, got: number, max: number): never {
  throw new ProtocolError("limit_exceeded", `${limit} exceeded: ${got} > ${max}`, limit);
}

interface KeyEntry {
  bytes: Uint8Array;
  id: number;
}
/** Strings bucketed by UTF-8 byte length, matched against the wire bytes without building strings. */
export type KeyTable = Array<KeyEntry[] | undefined>;
/** A table of (string, id) pairs; ids must be non-zero (0 means "not in the table"). */
export function keyTable(keys: ReadonlyArray<readonly [string, number]>): KeyTable {
  const t: KeyTable = [];
  for (const [k, id] of keys) {
    const bytes = Buffer.from(k, "utf8");
    const bucket = t[bytes.length] ?? [];
    bucket.push({ bytes, id });
    t[bytes.length] = bucket;
  }
  return t;
}

/** Strings returned as one shared instance each instead of a fresh string per read. */
export interface InternTable {
  table: KeyTable;
  strings: readonly string[];
}
export function internTable(strings: readonly string[]): InternTable {
  return { table: keyTable(strings.map((s, i): [string, number] => [s, i + 1])), strings };
}

export class MsgpackReader<L extends ReaderLimits = ReaderLimits> {
  buf: Buffer;
  pos: number;
  end: number;
  lim: L;
  /** Set by `strHeader` / `binHeader`: start of the string's bytes. */
  strStart = 0;
  /** Values `value` may still materialise (see `startValues`). */
  valueBudget = 0;
  valueBudgetMax = 0;
  valueBudgetLimit = "";

  constructor(buf: Buffer, lim: L) {
    this.buf = buf;
    this.pos = 0;
    this.end = buf.length;
    this.lim = lim;
  }

  /** Wrong type at `pos`: bad_schema, unless the byte is 0xc1, which is never valid msgpack. */
  bad(msg: string): never {
    if (this.pos < this.end && this.buf[this.pos] === 0xc1)
      malformed(`reserved type byte 0xc1 at offset ${this.pos}`);
    return schema(msg);
  }

  need(n: number): void {
    if (this.pos + n > this.end) malformed(`truncated at offset ${this.pos}`);
  }

  /** Consume an array header and return its count, or -1 (nothing consumed) if not an array. */
  arrayHeader(): number {
    this.need(1);
    const b = this.buf[this.pos]!;
    let n: number;
    if (b >= 0x90 && b <= 0x9f) {
      n = b & 0x0f;
      this.pos += 1;
    } else if (b === 0xdc) {
      this.need(3);
      n = this.buf.readUInt16BE(this.pos + 1);
      this.pos += 3;
    } else if (b === 0xdd) {
      this.need(5);
      n = this.buf.readUInt32BE(this.pos + 1);
      this.pos += 5;
    } else return -1;
    return n;
  }

  /** Consume a map header and return its entry count, or -1 (nothing consumed) if not a map. */
  mapHeader(): number {
    this.need(1);
    const b = this.buf[this.pos]!;
    let n: number;
    if (b >= 0x80 && b <= 0x8f) {
      n = b & 0x0f;
      this.pos += 1;
    } else if (b === 0xde) {
      this.need(3);
      n = this.buf.readUInt16BE(this.pos + 1);
      this.pos += 3;
    } else if (b === 0xdf) {
      this.need(5);
      n = this.buf.readUInt32BE(this.pos + 1);
      this.pos += 5;
    } else return -1;
    if (n > this.lim.maxMapEntries) overLimit("maxMapEntries", n, this.lim.maxMapEntries);
    if (n * 2 > this.end - this.pos) malformed(`map of ${n} entries exceeds the remaining bytes`);
    return n;
  }

  /** Items of an array must fit in the remaining bytes (>= 1 byte each). */
  fits(n: number): void {
    if (n > this.end - this.pos) malformed(`array of ${n} items exceeds the remaining bytes`);
  }

  /** Consume a str header, set strStart, return the byte length; -1 (nothing consumed) if not a str. */
  strHeader(): number {
    this.need(1);
    const b = this.buf[this.pos]!;
    let n: number;
    let h: number;
    if (b >= 0xa0 && b <= 0xbf) {
      n = b & 0x1f;
      h = 1;
    } else if (b === 0xd9) {
      this.need(2);
      n = this.buf[this.pos + 1]!;
      h = 2;
    } else if (b === 0xda) {
      this.need(3);
      n = this.buf.readUInt16BE(this.pos + 1);
      h = 3;
    } else if (b === 0xdb) {
      this.need(5);
      n = this.buf.readUInt32BE(this.pos + 1);
      h = 5;
    } else return -1;
    this.pos += h;
    this.need(n);
    this.strStart = this.pos;
    this.pos += n;
    return n;
  }

  /** Consume a bin header, set strStart, return the byte length; -1 (nothing consumed) if not bin. */
  binHeader(): number {
    this.need(1);
    const b = this.buf[this.pos]!;
    let n: number;
    let h: number;
    if (b === 0xc4) {
      this.need(2);
      n = this.buf[this.pos + 1]!;
      h = 2;
    } else if (b === 0xc5) {
      this.need(3);
      n = this.buf.readUInt16BE(this.pos + 1);
      h = 3;
    } else if (b === 0xc6) {
      this.need(5);
      n = this.buf.readUInt32BE(this.pos + 1);
      h = 5;
    } else return -1;
    this.pos += h;
    this.need(n);
    this.strStart = this.pos;
    this.pos += n;
    return n;
  }

  /** Look up the str just read (strStart, len) in a key table; 0 if unknown. */
  match(table: KeyTable, len: number): number {
    const bucket = table[len];
    if (bucket === undefined) return 0;
    const buf = this.buf;
    const s = this.strStart;
    for (let i = 0; i < bucket.length; i++) {
      const e = bucket[i]!;
      const k = e.bytes;
      let j = 0;
      while (j < len && buf[s + j] === k[j]) j++;
      if (j === len) return e.id;
    }
    return 0;
  }

  /** A map key that must be a string (as msgspec structs require); returns its byte length. */
  key(): number {
    const n = this.strHeader();
    if (n < 0) this.bad("map key is not a string");
    return n;
  }

  nil(): boolean {
    this.need(1);
    if (this.buf[this.pos] === 0xc0) {
      this.pos += 1;
      return true;
    }
    return false;
  }

  /** Any msgpack integer that is a safe JS integer; else bad_schema. */
  int(what: string): number {
    this.need(1);
    const buf = this.buf;
    const p = this.pos;
    const b = buf[p]!;
    if (b <= 0x7f) {
      this.pos = p + 1;
      return b;
    }
    if (b >= 0xe0) {
      this.pos = p + 1;
      return b - 256;
    }
    switch (b) {
      case 0xcc:
        this.need(2);
        this.pos = p + 2;
        return buf[p + 1]!;
      case 0xcd:
        this.need(3);
        this.pos = p + 3;
        return (buf[p + 1]! << 8) | buf[p + 2]!;
      case 0xce:
        this.need(5);
        this.pos = p + 5;
        return buf.readUInt32BE(p + 1);
      case 0xcf: {
        this.need(9);
        const hi = buf.readUInt32BE(p + 1);
        if (hi >= 0x200000) this.bad(`${what}: integer beyond 2^53`);
        this.pos = p + 9;
        return hi * TWO32 + buf.readUInt32BE(p + 5);
      }
      case 0xd0:
        this.need(2);
        this.pos = p + 2;
        return buf.readInt8(p + 1);
      case 0xd1:
        this.need(3);
        this.pos = p + 3;
        return buf.readInt16BE(p + 1);
      case 0xd2:
        this.need(5);
        this.pos = p + 5;
        return buf.readInt32BE(p + 1);
      case 0xd3: {
        this.need(9);
        const hi = buf.readInt32BE(p + 1);
        const v = hi * TWO32 + buf.readUInt32BE(p + 5);
        if (hi >= 0x200000 || hi < -0x200000 || !Number.isSafeInteger(v)) {
          this.bad(`${what}: integer beyond 2^53`);
        }
        this.pos = p + 9;
        return v;
      }
    }
    return this.bad(`${what}: expected an integer, got type byte 0x${b.toString(16)}`);
  }

  intOrNil(what: string): number | null {
    return this.nil() ? null : this.int(what);
  }

  /**
   * The `n` integers of an array whose header was just read (the caller checks `n` against its
   * limit and `fits`). The hot loop of a KV-event payload: the common widths are inlined,
   * bounds-checked per item.
   */
  ints(n: number, what: string): number[] {
    const out: number[] = new Array(n); // n <= the caller's limit and <= remaining bytes
    const buf = this.buf;
    const end = this.end;
    let p = this.pos;
    for (let i = 0; i < n; i++) {
      if (p >= end) malformed(`${what} truncated`);
      const b = buf[p]!;
      if (b <= 0x7f) {
        out[i] = b;
        p += 1;
      } else if (b === 0xcd && p + 3 <= end) {
        out[i] = (buf[p + 1]! << 8) | buf[p + 2]!;
        p += 3;
      } else if (b === 0xce && p + 5 <= end) {
        out[i] = buf[p + 1]! * 0x1000000 + ((buf[p + 2]! << 16) | (buf[p + 3]! << 8) | buf[p + 4]!);
        p += 5;
      } else if (b === 0xcc && p + 2 <= end) {
        out[i] = buf[p + 1]!;
        p += 2;
      } else {
        this.pos = p;
        out[i] = this.int(what);
        p = this.pos;
      }
    }
    this.pos = p;
    return out;
  }

  /** float64/float32/int → number. */
  float(what: string): number {
    this.need(1);
    const b = this.buf[this.pos]!;
    if (b === 0xcb) {
      this.need(9);
      const v = this.buf.readDoubleBE(this.pos + 1);
      this.pos += 9;
      return v;
    }
    if (b === 0xca) {
      this.need(5);
      const v = this.buf.readFloatBE(this.pos + 1);
      this.pos += 5;
      return v;
    }
    return this.int(what);
  }

  /** A string of at most maxStringBytes; one shared instance for the strings of `intern`. */
  str(what: string, intern: InternTable): string {
    const n = this.strHeader();
    if (n < 0) this.bad(`${what}: expected a string`);
    if (n > this.lim.maxStringBytes) overLimit("maxStringBytes", n, this.lim.maxStringBytes);
    const interned = this.match(intern.table, n);
    if (interned !== 0) return intern.strings[interned - 1]!;
    return this.buf.toString("utf8", this.strStart, this.strStart + n);
  }

  strOrNil(what: string, intern: InternTable): string | null {
    return this.nil() ? null : this.str(what, intern);
  }

  /** Skip one value of any type without materialising it. */
  skipValue(depth: number): void {
    this.need(1);
    const buf = this.buf;
    const b = buf[this.pos]!;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      this.pos += 1;
      return;
    }
    if ((b >= 0xa0 && b <= 0xbf) || b === 0xd9 || b === 0xda || b === 0xdb) {
      this.strHeader();
      return;
    }
    if (b === 0xc4 || b === 0xc5 || b === 0xc6) {
      this.binHeader();
      return;
    }
    if ((b >= 0x90 && b <= 0x9f) || b === 0xdc || b === 0xdd) {
      if (depth > this.lim.maxDepth) overLimit("maxDepth", depth, this.lim.maxDepth);
      const n = this.arrayHeader();
      this.fits(n);
      for (let i = 0; i < n; i++) this.skipValue(depth + 1);
      return;
    }
    if ((b >= 0x80 && b <= 0x8f) || b === 0xde || b === 0xdf) {
      if (depth > this.lim.maxDepth) overLimit("maxDepth", depth, this.lim.maxDepth);
      const n = this.mapHeader();
      for (let i = 0; i < 2 * n; i++) this.skipValue(depth + 1);
      return;
    }
    let size = FIXED_SIZE[b]!;
    if (size === 0) {
      if (b === 0xc7) {
        this.need(2);
        size = 3 + buf[this.pos + 1]!;
      } else if (b === 0xc8) {
        this.need(3);
        size = 4 + buf.readUInt16BE(this.pos + 1);
      } else if (b === 0xc9) {
        this.need(5);
        size = 6 + buf.readUInt32BE(this.pos + 1);
      } else malformed(`reserved type byte 0xc1 at offset ${this.pos}`);
    }
    this.need(size);
    this.pos += size;
  }

  /**
   * Let the following `value` calls materialise at most `max` values (at any depth) plus the
   * outermost one; going beyond is limit_exceeded naming `limit`.
   */
  startValues(max: number, limit: string): void {
    this.valueBudget = max + 1;
    this.valueBudgetMax = max;
    this.valueBudgetLimit = limit;
  }

  /**
   * Any value: nil/bool/number/string/bytes/array/map (maps with string keys, as plain objects).
   * Integers beyond 2^53 become bigint. Counts against the budget set by `startValues`.
   */
  value(depth: number, what: string): unknown {
    if (--this.valueBudget < 0)
      overLimit(this.valueBudgetLimit, this.valueBudgetMax + 1, this.valueBudgetMax);
    this.need(1);
    const buf = this.buf;
    const b = buf[this.pos]!;
    if (b === 0xc0) {
      this.pos += 1;
      return null;
    }
    if (b === 0xc2 || b === 0xc3) {
      this.pos += 1;
      return b === 0xc3;
    }
    if (b === 0xca || b === 0xcb) return this.float(what);
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3)) {
      if (b === 0xcf || b === 0xd3) {
        this.need(9);
        const hi = b === 0xcf ? buf.readUInt32BE(this.pos + 1) : buf.readInt32BE(this.pos + 1);
        const lo = buf.readUInt32BE(this.pos + 5);
        if (hi >= 0x200000 || hi < -0x200000 || !Number.isSafeInteger(hi * TWO32 + lo)) {
          const v = b === 0xcf ? buf.readBigUInt64BE(this.pos + 1) : buf.readBigInt64BE(this.pos + 1);
          this.pos += 9;
          return v;
        }
      }
      return this.int(what);
    }
    let n = this.strHeader();
    if (n >= 0) {
      if (n > this.lim.maxStringBytes) overLimit("maxStringBytes", n, this.lim.maxStringBytes);
      return buf.toString("utf8", this.strStart, this.strStart + n);
    }
    n = this.binHeader();
    if (n >= 0) {
      if (n > this.lim.maxStringBytes) overLimit("maxStringBytes", n, this.lim.maxStringBytes);
      return new Uint8Array(buf.subarray(this.strStart, this.strStart + n));
    }
    if (depth > this.lim.maxDepth) overLimit("maxDepth", depth, this.lim.maxDepth);
    n = this.arrayHeader();
    if (n >= 0) {
      if (n > this.valueBudget) overLimit(this.valueBudgetLimit, n, this.valueBudgetMax);
      this.fits(n);
      const out: unknown[] = [];
      for (let i = 0; i < n; i++) out.push(this.value(depth + 1, what));
      return out;
    }
    n = this.mapHeader();
    if (n >= 0) {
      if (2 * n > this.valueBudget) overLimit(this.valueBudgetLimit, 2 * n, this.valueBudgetMax);
      const out: Record<string, unknown> = {};
      for (let i = 0; i < n; i++) {
        const k = this.value(depth + 1, what);
        if (typeof k !== "string") this.bad(`${what}: map key is not a string`);
        Object.defineProperty(out, k, {
          value: this.value(depth + 1, what),
          enumerable: true,
          writable: true,
        });
      }
      return out;
    }
    return this.bad(`${what}: unsupported msgpack type byte 0x${b.toString(16)}`);
  }
}
