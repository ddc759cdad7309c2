/**
 * HashKey helpers (layout documented in types.ts):
 *   "u" + 8 latin1 chars: big-endian bytes of a non-negative integer < 2^64
 *   "n" + 8 latin1 chars: big-endian two's complement of a negative integer >= -2^63
 *   "b" + N latin1 chars: the raw bytes of a byte-string hash
 * Every builder here produces the same key for the same value whatever its wire width, so keys
 * compare and hash correctly as Map keys. Only `hashFromBigInt`/`hashToBigInt` (and the text
 * conversions of values >= 2^53) use BigInt; none of them is on the decode hot path.
 */
import { ProtocolError } from "./errors.ts";
import type { HashKey } from "./types.ts";

const U = 117; // "u"
const N = 110; // "n"
const B = "b";
const TWO32 = 0x1_0000_0000;

interface Latin1Sliceable {
  latin1Slice(start: number, end: number): string;
}
const hasLatin1Slice =
  typeof (Buffer.prototype as unknown as Partial<Latin1Sliceable>).latin1Slice === "function";

/** Bytes [start, end) of `buf` as a one-char-per-byte string (no copy of the bytes, no BigInt). */
export function latin1(buf: Buffer, start: number, end: number): string {
  return hasLatin1Slice
    ? (buf as unknown as Latin1Sliceable).latin1Slice(start, end)
    : buf.toString("latin1", start, end);
}

function asBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** Byte-string hash (e.g. a 32-byte sha256 or 16-byte xxhash digest) → HashKey. */
export function hashFromBytes(u8: Uint8Array, start = 0, end = u8.length): HashKey {
  if (start < 0 || end > u8.length || start > end) throw new RangeError("hashFromBytes: bad range");
  return B + latin1(asBuffer(u8), start, end);
}

/** Precomputed keys for 0..255 (the most common small-int hashes and the uint8 width). */
const SMALL_U: string[] = [];
for (let i = 0; i < 256; i++) SMALL_U.push(String.fromCharCode(U, 0, 0, 0, 0, 0, 0, 0, i));

/** Non-negative integer given as two uint32 halves → HashKey ("u"). */
export function hashFromUint64Parts(hi: number, lo: number): HashKey {
  if (hi === 0 && lo < 256) return SMALL_U[lo]!;
  return String.fromCharCode(
    U,
    hi >>> 24,
    (hi >>> 16) & 255,
    (hi >>> 8) & 255,
    hi & 255,
    lo >>> 24,
    (lo >>> 16) & 255,
    (lo >>> 8) & 255,
    lo & 255,
  );
}

/** Negative integer given as the two uint32 halves of its 64-bit two's complement → HashKey ("n"). */
export function hashFromInt64NegParts(hi: number, lo: number): HashKey {
  return String.fromCharCode(
    N,
    hi >>> 24,
    (hi >>> 16) & 255,
    (hi >>> 8) & 255,
    hi & 255,
    lo >>> 24,
    (lo >>> 16) & 255,
    (lo >>> 8) & 255,
    lo & 255,
  );
}

/** Safe integer (negative too) → HashKey. Throws RangeError for non-integers / unsafe values. */
export function hashFromInt(n: number): HashKey {
  if (!Number.isSafeInteger(n)) throw new RangeError(`hashFromInt: not a safe integer: ${n}`);
  if (n >= 0) {
    if (n < 256) return SMALL_U[n]!;
    return hashFromUint64Parts(Math.floor(n / TWO32), n % TWO32);
  }
  // two's complement of a negative safe integer: 2^64 + n, split without BigInt
  const hi = Math.floor(n / TWO32); // negative, >= -2^21
  const lo = n - hi * TWO32; // 0 <= lo < 2^32
  return hashFromInt64NegParts(hi >>> 0, lo);
}

const MIN_I64 = -(1n << 63n);
const MAX_U64 = (1n << 64n) - 1n;

/** bigint in [-2^63, 2^64) → HashKey. */
export function hashFromBigInt(b: bigint): HashKey {
  if (b < MIN_I64 || b > MAX_U64) throw new RangeError(`hashFromBigInt: out of int64/uint64 range: ${b}`);
  const v = b < 0n ? b + (1n << 64n) : b;
  const hi = Number(v >> 32n);
  const lo = Number(v & 0xffffffffn);
  return b < 0n ? hashFromInt64NegParts(hi, lo) : hashFromUint64Parts(hi, lo);
}

export type HashKind = "uint" | "negint" | "bytes";

export function hashKind(key: HashKey): HashKind {
  const c = key.charCodeAt(0);
  if (c === U && key.length === 9) return "uint";
  if (c === N && key.length === 9) return "negint";
  if (c === 98) return "bytes";
  throw new RangeError("not a HashKey");
}

/** True when `key` has one of the three HashKey layouts. */
export function isHashKey(key: unknown): key is HashKey {
  if (typeof key !== "string" || key.length === 0) return false;
  const c = key.charCodeAt(0);
  if ((c !== U && c !== N && c !== 98) || ((c === U || c === N) && key.length !== 9)) return false;
  for (let i = 1; i < key.length; i++) if (key.charCodeAt(i) > 255) return false;
  return true;
}

function hiLo(key: HashKey): [number, number] {
  const hi =
    ((key.charCodeAt(1) << 24) | (key.charCodeAt(2) << 16) | (key.charCodeAt(3) << 8) | key.charCodeAt(4)) >>>
    0;
  const lo =
    ((key.charCodeAt(5) << 24) | (key.charCodeAt(6) << 16) | (key.charCodeAt(7) << 8) | key.charCodeAt(8)) >>>
    0;
  return [hi, lo];
}

/** Integer hash → bigint (not for hot paths). Throws RangeError for byte-string hashes. */
export function hashToBigInt(key: HashKey): bigint {
  const kind = hashKind(key);
  if (kind === "bytes") throw new RangeError("hashToBigInt: byte-string hash");
  const [hi, lo] = hiLo(key);
  const v = (BigInt(hi) << 32n) | BigInt(lo);
  return kind === "negint" ? v - (1n << 64n) : v;
}

/** The raw bytes of a key's value: 8 big-endian bytes for integers, the string's bytes otherwise. */
export function hashToBytes(key: HashKey): Buffer {
  return Buffer.from(key.slice(1), "latin1");
}

/** Canonical text: decimal for integers (any sign/width), "0x" + lowercase hex for byte strings. */
export function hashToText(key: HashKey): string {
  const kind = hashKind(key);
  if (kind === "bytes") return `0x${Buffer.from(key.slice(1), "latin1").toString("hex")}`;
  const [hi, lo] = hiLo(key);
  if (kind === "uint") {
    if (hi < 0x200000) return String(hi * TWO32 + lo);
  } else if (hi >= 0xffe00000) {
    return String((hi - TWO32) * TWO32 + lo);
  }
  return hashToBigInt(key).toString();
}

const DEC_RE = /^-?(0|[1-9][0-9]{0,19})$/;
const HEX_RE = /^(?:[0-9a-fA-F]{2})+$/;

/**
 * Parse a hash's text form: decimal integer (may be negative, up to 2^64-1), "0x" + hex bytes, or
 * plain hex of exactly 32 or 64 chars (16/32-byte digests, as the conformance files write them).
 * Throws ProtocolError("bad_schema") for anything else.
 */
export function hashFromText(text: string): HashKey {
  if (text.length > 2 && text[0] === "0" && (text[1] === "x" || text[1] === "X")) {
    const hex = text.slice(2);
    if (HEX_RE.test(hex)) return B + Buffer.from(hex, "hex").toString("latin1");
    throw new ProtocolError("bad_schema", `bad hex hash text: ${JSON.stringify(text.slice(0, 80))}`);
  }
  if (DEC_RE.test(text)) {
    const n = Number(text);
    if (Number.isSafeInteger(n)) return hashFromInt(n);
    const b = BigInt(text);
    if (b >= MIN_I64 && b <= MAX_U64) return hashFromBigInt(b);
    throw new ProtocolError("bad_schema", `integer hash out of int64/uint64 range: ${text}`);
  }
  if ((text.length === 32 || text.length === 64) && HEX_RE.test(text)) {
    return B + Buffer.from(text, "hex").toString("latin1");
  }
  throw new ProtocolError("bad_schema", `bad hash text: ${JSON.stringify(text.slice(0, 80))}`);
}
