/**
 * The index's own chained block hash (the router never needs an engine's hash function).
 *
 *   key_0 = H(seed(ns), ROOT, tokens[0 .. bs))
 *   key_i = H(seed(ns), key_{i-1}, tokens[i*bs .. (i+1)*bs))
 *
 * A key is 64 bits held as two int32 lanes (hi, lo) computed by two differently-seeded
 * multiply-rotate lanes over the token ids (each lane runs two accumulators, even and odd
 * positions, for instruction-level parallelism), each started from the full 64-bit previous key
 * and the namespace seed, and finished with a cross-lane avalanche. Each per-token step
 * (xor, multiply by an odd constant, rotate) is a bijection of the accumulator, so two blocks
 * that differ in a single token never collide; otherwise collisions are ~2^-64 per pair
 * (about 3e-6 expected collisions among 10M blocks).
 *
 * Hot-path rules: no BigInt, no allocation. Results are written into a caller-owned
 * `Int32Array` (out[o] = hi, out[o + 1] = lo).
 */
import type { NamespaceRef } from "./types.ts";

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/**
 * Hash one block: tokens[start .. start + blockSize) chained on (prevHi, prevLo) within the
 * namespace whose seed is (seedHi, seedLo). The root block uses prev = (0, 0).
 * Writes the key to out[o], out[o + 1].
 */
export function chainHash(
  seedHi: number,
  seedLo: number,
  prevHi: number,
  prevLo: number,
  tokens: ArrayLike<number>,
  start: number,
  blockSize: number,
  out: Int32Array,
  o = 0,
): void {
  const a = fmix32(seedHi ^ Math.imul(prevLo ^ 0x27d4eb2f, 0x9e3779b1) ^ prevHi);
  const b = fmix32(seedLo ^ Math.imul(prevHi ^ 0x165667b1, 0x85ebca77) ^ prevLo);
  // two accumulators per lane (even / odd token positions) for instruction-level parallelism
  let a0 = a;
  let a1 = a ^ 0x68e31da4;
  let b0 = b;
  let b1 = b ^ 0x1b56c4e9;
  const end = start + blockSize;
  let i = start;
  for (; i + 1 < end; i += 2) {
    const t0 = tokens[i] | 0;
    const t1 = tokens[i + 1] | 0;
    a0 = Math.imul(a0 ^ t0, 0xcc9e2d51);
    a1 = Math.imul(a1 ^ t1, 0xcc9e2d51);
    b0 = Math.imul(b0 ^ t0, 0x1b873593);
    b1 = Math.imul(b1 ^ t1, 0x1b873593);
    a0 = (a0 << 15) | (a0 >>> 17);
    a1 = (a1 << 15) | (a1 >>> 17);
    b0 = (b0 << 13) | (b0 >>> 19);
    b1 = (b1 << 13) | (b1 >>> 19);
  }
  if (i < end) {
    const t = tokens[i] | 0;
    a0 = Math.imul(a0 ^ t, 0xcc9e2d51);
    b0 = Math.imul(b0 ^ t, 0x1b873593);
  }
  // for a fixed a1 the combination is a bijection of a0 (and vice versa)
  const fa = fmix32(a0 ^ Math.imul(a1 ^ blockSize, 0x9e3779b1));
  const fb = fmix32(b0 ^ Math.imul(b1 ^ blockSize, 0x2f0b3c45));
  out[o] = fmix32(fa ^ Math.imul(fb, 0x7feb352d));
  out[o + 1] = fmix32(fb ^ Math.imul(fa, 0x846ca68b) ^ 0x5bd1e995);
}

/** Two-lane 32-bit hash of a string's UTF-16 code units, written to out[o], out[o + 1]. */
export function stringHash64(s: string, out: Int32Array, o = 0): void {
  let a = 0x3c6ef372 ^ s.length;
  let b = 0x510e527f ^ Math.imul(s.length, 0x9e3779b1);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0xcc9e2d51);
    a = (a << 15) | (a >>> 17);
    b = Math.imul(b ^ c, 0x1b873593);
    b = (b << 13) | (b >>> 19);
  }
  a = fmix32(a);
  b = fmix32(b);
  out[o] = fmix32(a ^ Math.imul(b, 0x7feb352d));
  out[o + 1] = fmix32(b ^ Math.imul(a, 0x846ca68b));
}

/** The canonical namespace string: model, LoRA adapter ("" for the base model), block size. */
export function namespaceKey(model: string, lora: string | null, blockSize: number): string {
  return `${model}\u0000${lora === null ? "\u0001base" : `\u0002${lora}`}\u0000${blockSize}`;
}

/** The namespace seed (hi, lo) written to out[o], out[o + 1]. */
export function namespaceSeed(ns: NamespaceRef, out: Int32Array, o = 0): void {
  stringHash64(namespaceKey(ns.model, ns.lora, ns.blockSize), out, o);
}

/**
 * Convenience (allocates): the chain keys of every full block of `tokenIds` in `ns`, as
 * [hi0, lo0, hi1, lo1, ...]. For tests, tools and debugging; the index uses `chainHash` directly.
 */
export function blockKeys(ns: NamespaceRef, tokenIds: ArrayLike<number>): Int32Array {
  const bs = ns.blockSize;
  const n = bs > 0 ? Math.floor(tokenIds.length / bs) : 0;
  const out = new Int32Array(n * 2);
  const seed = new Int32Array(2);
  namespaceSeed(ns, seed);
  let ph = 0;
  let pl = 0;
  for (let i = 0; i < n; i++) {
    chainHash(seed[0], seed[1], ph, pl, tokenIds, i * bs, bs, out, i * 2);
    ph = out[i * 2];
    pl = out[i * 2 + 1];
  }
  return out;
}
