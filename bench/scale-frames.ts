/**
 * The scale publisher's batches, encoded by patching templates: a batch's bytes depend only on
 * its shape (how many blocks each BlockStored event holds, how many a BlockRemoved removes)
 * once every hash is written as a msgpack uint64 and every rolling token as a uint16, so each
 * shape is encoded once by the real encoder (src/protocol/encode.ts, vLLM's 2026-05 array era)
 * and every later batch of that shape is a copy with its timestamp, hashes and tokens written at
 * known offsets. The first batch of every shape is compared with the real encoder's bytes, so a
 * template can never drift from what vLLM writes.
 */
import { blockRemoved, blockStored } from "../src/protocol/build.ts";
import { encodeBatch } from "../src/protocol/encode.ts";
import { hashFromInt } from "../src/protocol/hash.ts";
import type { KvEvent } from "../src/protocol/types.ts";
import { BLOCK_SIZE } from "./scale-fleet.ts";

export const ERA = "2026-05" as const;
/** every id is at least 2^33: msgpack writes it as uint64 (0xcf + 8 bytes), one width for all */
const ID_BASE = 2 ** 33;
/** block `n` of pod `pod` (n < 1e9; tenant prompts use n >= 9e8, rolling chains below) */
export const blockId = (pod: number, n: number) => ID_BASE + pod * 1e9 + n;
/** n of tenant t's block b */
export const tenantN = (t: number, b: number) => 900_000_000 + t * 100 + b;

/**
 * Token j of rolling block n of pod `pod`: 256..65,535 (msgpack uint16, one width), and the
 * first three say n and the pod, so no two rolling blocks carry the same tokens (the index keys
 * blocks by a chain hash of their tokens: equal tokens under one parent would merge them).
 */
export function rollingToken(pod: number, n: number, j: number): number {
  if (j === 0) return 256 + (n % 65_000);
  if (j === 1) return 256 + (Math.floor(n / 65_000) % 65_000);
  if (j === 2) return 256 + (pod % 65_000);
  return 256 + ((n * 31 + j * 7 + pod) % 65_000);
}

/** One BlockStored of a batch: blocks first..first+count-1 of the pod, continuing `parent` (an n). */
export interface StoredRun {
  parent: number;
  first: number;
  count: number;
}

interface Template {
  bytes: Buffer;
  /** per stored run: offsets of each hash's 0xcf, of the parent's, of the first token's 0xcd */
  stored: Array<{ hashes: number[]; parent: number; tokens: number }>;
  /** offsets of each removed hash's 0xcf */
  removed: number[];
  verified: boolean;
}

const MARK = 2 ** 40;

function writeId(buf: Buffer, at: number, v: number): void {
  buf[at] = 0xcf;
  buf.writeUInt32BE(Math.floor(v / 2 ** 32), at + 1);
  buf.writeUInt32BE(v >>> 0, at + 5);
}

function idBytes(v: number): Buffer {
  const b = Buffer.alloc(9);
  writeId(b, 0, v);
  return b;
}

function eventsOf(
  pod: number,
  runs: readonly StoredRun[],
  removedFirst: number,
  removedCount: number,
): KvEvent[] {
  const events: KvEvent[] = [];
  for (const r of runs) {
    const hashes = [];
    const tokens: number[] = [];
    for (let k = 0; k < r.count; k++) {
      hashes.push(hashFromInt(blockId(pod, r.first + k)));
      for (let j = 0; j < BLOCK_SIZE; j++) tokens.push(rollingToken(pod, r.first + k, j));
    }
    events.push(
      blockStored(hashes, hashFromInt(blockId(pod, r.parent)), tokens, BLOCK_SIZE, { medium: "GPU" }),
    );
  }
  if (removedCount > 0) {
    const hashes = [];
    for (let k = 0; k < removedCount; k++) hashes.push(hashFromInt(blockId(pod, removedFirst + k)));
    events.push(blockRemoved(hashes, { medium: "GPU" }));
  }
  return events;
}

/** A template of this shape: the real encoder's bytes of marker values, and where they sit. */
function build(counts: readonly number[], removedCount: number): Template {
  // markers: distinct uint64 ids (hashes, parents) and distinct uint16 tokens per run (256 + i)
  let m = MARK;
  const runs = counts.map((count) => {
    const ids = Array.from({ length: count }, () => m++);
    return { ids, parent: m++, count };
  });
  const removedIds = Array.from({ length: removedCount }, () => m++);
  const events: KvEvent[] = runs.map((r) =>
    blockStored(
      r.ids.map(hashFromInt),
      hashFromInt(r.parent),
      Array.from({ length: r.count * BLOCK_SIZE }, (_, i) => 256 + i),
      BLOCK_SIZE,
      { medium: "GPU" },
    ),
  );
  if (removedCount > 0) events.push(blockRemoved(removedIds.map(hashFromInt), { medium: "GPU" }));
  const bytes = encodeBatch({ ts: 1.5, events, dpRank: null }, ERA);
  if (bytes[0] !== 0x93 || bytes[1] !== 0xcb) throw new Error("scale frames: unexpected batch header");
  const find = (needle: Buffer, from: number) => {
    const at = bytes.indexOf(needle, from);
    if (at < 0) throw new Error("scale frames: marker not found in the template");
    return at;
  };
  let at = 10;
  const stored = runs.map((r) => {
    const hashes = r.ids.map((id) => {
      at = find(idBytes(id), at);
      return at;
    });
    const parent = find(idBytes(r.parent), at);
    const tokens = find(Buffer.from([0xcd, 0x01, 0x00, 0xcd, 0x01, 0x01]), parent + 9);
    at = tokens + 3 * r.count * BLOCK_SIZE;
    return { hashes, parent, tokens };
  });
  const removed = removedIds.map((id) => {
    at = find(idBytes(id), at);
    return at;
  });
  return { bytes, stored, removed, verified: false };
}

const MAX_TEMPLATES = 4096;

/** Encodes a pod's batches from templates, one per shape (bounded: the cache resets when full). */
export class FrameEncoder {
  private readonly templates = new Map<string, Template>();
  templatesBuilt = 0;

  encode(
    ts: number,
    pod: number,
    runs: readonly StoredRun[],
    removedFirst: number,
    removedCount: number,
  ): Buffer {
    let key = "";
    for (const r of runs) key += `${r.count},`;
    key += `|${removedCount}`;
    let t = this.templates.get(key);
    if (t === undefined) {
      if (this.templates.size >= MAX_TEMPLATES) this.templates.clear();
      t = build(
        runs.map((r) => r.count),
        removedCount,
      );
      this.templates.set(key, t);
      this.templatesBuilt++;
    }
    const out = Buffer.allocUnsafe(t.bytes.length);
    t.bytes.copy(out);
    out.writeDoubleBE(ts, 2);
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i];
      const s = t.stored[i];
      for (let k = 0; k < r.count; k++) writeId(out, s.hashes[k], blockId(pod, r.first + k));
      writeId(out, s.parent, blockId(pod, r.parent));
      let o = s.tokens + 1;
      for (let k = 0; k < r.count; k++)
        for (let j = 0; j < BLOCK_SIZE; j++, o += 3) out.writeUInt16BE(rollingToken(pod, r.first + k, j), o);
    }
    for (let k = 0; k < removedCount; k++) writeId(out, t.removed[k], blockId(pod, removedFirst + k));
    if (!t.verified) {
      const want = encodeBatch(
        { ts, events: eventsOf(pod, runs, removedFirst, removedCount), dpRank: null },
        ERA,
      );
      if (!want.equals(out))
        throw new Error(`scale frames: template ${key} differs from the encoder's bytes`);
      t.verified = true;
    }
    return out;
  }
}
