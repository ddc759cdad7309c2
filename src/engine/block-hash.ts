import { createHash, randomBytes } from "node:crypto";

/**
 * vLLM-style chained block hashes.
 *
 * The hash of a full block is sha256 over (parent digest, the block's token ids, extra keys),
 * where the parent of the first block is a per-process root digest ("NONE_HASH"): random
 * unless a seed is given (vLLM derives it from PYTHONHASHSEED). Two engines started without
 * a seed therefore hash identical tokens differently, exactly like real vLLM processes.
 *
 * Digests are kept as 32-char latin1 strings (one char per byte): cheap Map keys, exact.
 */
export type Digest = string;

export function rootDigest(seed: string | null): Digest {
  const bytes = seed === null ? randomBytes(32) : createHash("sha256").update(`kvsync-seed:${seed}`).digest();
  return bytes.toString("latin1");
}

const tokenBuf = Buffer.alloc(4 * 1024);

/** Digest of one full block. `extra` is the extra-keys string (e.g. the LoRA adapter name) or "". */
export function blockDigest(
  parent: Digest,
  tokens: ArrayLike<number>,
  start: number,
  n: number,
  extra: string,
): Digest {
  const h = createHash("sha256");
  h.update(parent, "latin1");
  let buf = tokenBuf;
  if (n * 4 > buf.length) buf = Buffer.alloc(n * 4);
  for (let i = 0; i < n; i++) buf.writeUInt32LE(tokens[start + i] >>> 0, i * 4);
  h.update(buf.subarray(0, n * 4));
  if (extra.length > 0) {
    h.update("\u0000extra:");
    h.update(extra, "utf8");
  }
  return h.digest().toString("latin1");
}

/**
 * Extends `out` with the digests of every full block of `tokens` not hashed yet.
 * `out.length` blocks are assumed hashed already.
 */
export function extendDigests(
  out: Digest[],
  root: Digest,
  tokens: ArrayLike<number>,
  blockSize: number,
  extra: string,
  firstExtra: string = extra,
): void {
  const full = Math.floor(tokens.length / blockSize);
  for (let b = out.length; b < full; b++) {
    const parent = b === 0 ? root : out[b - 1];
    out.push(blockDigest(parent, tokens, b * blockSize, blockSize, b === 0 ? firstExtra : extra));
  }
}

/**
 * Extra keys of a request's first block: vLLM adds the cache salt to the first block's extra
 * keys only (the chain carries it to the rest), after the LoRA name.
 */
export function firstExtraKey(loraName: string | null, cacheSalt: string | null): string {
  const lora = loraName ?? "";
  return cacheSalt === null ? lora : `${lora}\u0000salt:${cacheSalt}`;
}

/** The last 8 bytes of a digest as two uint32 halves (vLLM's int hash format). */
export function digestUint64Parts(d: Digest): { hi: number; lo: number } {
  const n = d.length;
  const byte = (i: number) => d.charCodeAt(i) & 0xff;
  const hi = ((byte(n - 8) << 24) | (byte(n - 7) << 16) | (byte(n - 6) << 8) | byte(n - 5)) >>> 0;
  const lo = ((byte(n - 4) << 24) | (byte(n - 3) << 16) | (byte(n - 2) << 8) | byte(n - 1)) >>> 0;
  return { hi, lo };
}
