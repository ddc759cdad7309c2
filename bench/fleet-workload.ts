/**
 * The index benchmarks' workload: a fleet of simulated engines (shared system-prompt templates
 * with skewed popularity, unique continuations, engine-side LRU eviction), each scheduler step
 * encoded as one msgpack batch as vLLM's publisher would send it. Seeded: the same bytes every run.
 * Used by index.bench.ts and by the process-isolated A/B runner (bench/ab/).
 */

import type { PrefixIndex, StreamRef } from "../src/index/index.ts";
import { hashFromUint64Parts } from "../src/protocol/hash.ts";
import {
  type BlockRemoved,
  type BlockStored,
  blockRemoved,
  blockStored,
  type DecodeResult,
  type EventBatch,
  encodeBatch,
  type HashKey,
} from "../src/protocol/index.ts";
import { seededRandom } from "../src/util/rng.ts";

export const PODS = 100;
export const BS = 16;
export const MODEL = "Qwen/Qwen3-8B";

/** the workload's random stream (the bench draws its prompts from it too) */
export const r = seededRandom(42);
const u32 = () => (r() * 4294967296) >>> 0;
export function randHash(): HashKey {
  const hi = u32();
  const lo = u32();
  return hashFromUint64Parts(hi, lo);
}
export function randTokens(n: number): number[] {
  const t = new Array<number>(n);
  for (let i = 0; i < n; i++) t[i] = (r() * 151_000) | 0;
  return t;
}
export const streams: StreamRef[] = Array.from({ length: PODS }, (_, i) => ({
  streamId: `pod-${i}`,
  pod: `pod-${i}`,
  rank: null,
  model: MODEL,
}));

export function storedEv(
  hashes: HashKey[],
  parent: HashKey | null,
  tokenIds: number[],
  medium = "GPU",
): BlockStored {
  return blockStored(hashes, parent, tokenIds, BS, { medium });
}
function removedEv(hashes: HashKey[]): BlockRemoved {
  return blockRemoved(hashes, { medium: "GPU" });
}

// ------------------------------------------------------------------ workload: fleet of engines

const TEMPLATES = 24;
const TEMPLATE_BLOCKS = 32;
const templateTokens = Array.from({ length: TEMPLATES }, () => randTokens(TEMPLATE_BLOCKS * BS));

export class EngineSim {
  /** engine hash -> true, in LRU order */
  lru = new Map<HashKey, true>();
  templateHashes = new Map<number, HashKey[]>();
  /** `capacity`: the engine's cache in blocks (LRU eviction beyond it) */
  constructor(readonly capacity: number) {}
  tmplHashes(t: number): HashKey[] {
    let h = this.templateHashes.get(t);
    if (!h) {
      h = Array.from({ length: TEMPLATE_BLOCKS }, randHash);
      this.templateHashes.set(t, h);
    }
    return h;
  }
  /** one request: template + unique continuation; returns its events */
  request(): { events: (BlockStored | BlockRemoved)[]; blockEvents: number } {
    const t = Math.min(TEMPLATES - 1, Math.floor(-Math.log(1 - r()) * 4)); // skewed template popularity
    const th = this.tmplHashes(t);
    const events: (BlockStored | BlockRemoved)[] = [];
    let blockEvents = 0;
    let start = 0;
    while (start < th.length && this.lru.has(th[start])) {
      this.lru.delete(th[start]);
      this.lru.set(th[start], true);
      start++;
    }
    if (start < th.length) {
      const hs = th.slice(start);
      events.push(storedEv(hs, start === 0 ? null : th[start - 1], templateTokens[t].slice(start * BS)));
      for (const h of hs) this.lru.set(h, true);
      blockEvents += hs.length;
    }
    const n = 4 + Math.floor(r() * 28);
    const hs = Array.from({ length: n }, randHash);
    events.push(storedEv(hs, th[th.length - 1], randTokens(n * BS)));
    for (const h of hs) this.lru.set(h, true);
    blockEvents += n;
    if (this.lru.size > this.capacity) {
      const victims: HashKey[] = [];
      for (const h of this.lru.keys()) {
        if (this.lru.size - victims.length <= this.capacity) break;
        victims.push(h);
      }
      for (const h of victims) this.lru.delete(h);
      events.push(removedEv(victims));
      blockEvents += victims.length;
    }
    return { events, blockEvents };
  }
}

export interface Step {
  stream: StreamRef;
  payload: Buffer;
}

/** batches until `targetBlockEvents` block events, from PODS engines of `engineCapacity` blocks each */
export function makeWorkload(
  targetBlockEvents: number,
  engineCapacity: number,
): {
  steps: Step[];
  blockEvents: number;
  bytes: number;
  engines: EngineSim[];
} {
  const engines = streams.map(() => new EngineSim(engineCapacity));
  const steps: Step[] = [];
  let blockEvents = 0;
  let bytes = 0;
  let ts = 1_700_000_000;
  while (blockEvents < targetBlockEvents) {
    for (let p = 0; p < PODS; p++) {
      // one scheduler step: 1-3 requests' worth of events
      const events: (BlockStored | BlockRemoved)[] = [];
      const k = 1 + Math.floor(r() * 3);
      for (let j = 0; j < k; j++) {
        const q = engines[p].request();
        events.push(...q.events);
        blockEvents += q.blockEvents;
      }
      const payload = encodeBatch({ ts: ts++, events, dpRank: 0 }, "2026-07");
      bytes += payload.length;
      steps.push({ stream: streams[p], payload });
    }
  }
  // The engines' LRU state (600k map entries for 100 engines of 6000 blocks) is generator-only:
  // kept alive, every major GC during the timed apply would mark it too, and charge that to the
  // index (about 8% of apply CPU, fresh-process A/B). Only the template hashes are used later.
  for (const e of engines) e.lru.clear();
  return { steps, blockEvents, bytes, engines };
}

/** tokens per match prompt: 8k (512 blocks of 16) */
export const PROMPT_BLOCKS = 512;

/**
 * The match benchmark's index: `steps` applied as applyChunked does, with the match prompts
 * stored in between, turn by turn, so their blocks get records the way a live index hands them
 * out (from the free list the churn refills, and from the end), not all from one fresh run.
 * Realistic prompts: 50 conversations (a template + 480 history blocks, arriving in turns of 8 to
 * 56 blocks spread over the workload) each held in full by 2 pods, half by 3 and 1/8 by 5 (the
 * template under each pod's own engine hashes: a re-store); worst: one prompt every pod holds
 * in full, stored at the end.
 */
export function buildMatchIndex(
  ix: PrefixIndex,
  steps: Step[],
  decode: (payload: Uint8Array) => DecodeResult,
  engines: EngineSim[],
): { convs: number[][]; worst: number[] } {
  interface Holder {
    pod: number;
    blocks: number;
    hashes: HashKey[];
  }
  const convs: number[][] = [];
  const holders: Holder[][] = [];
  const turns: number[][] = []; // per conversation: the block index where each turn ends
  for (let c = 0; c < 50; c++) {
    const t = c % TEMPLATES;
    convs.push(templateTokens[t].concat(randTokens((PROMPT_BLOCKS - TEMPLATE_BLOCKS) * BS)));
    const pods = new Set<number>();
    while (pods.size < 10) pods.add(Math.floor(r() * PODS));
    holders.push(
      [...pods].map((pod, i) => {
        const blocks = i < 2 ? PROMPT_BLOCKS : i < 5 ? PROMPT_BLOCKS / 2 : PROMPT_BLOCKS / 8;
        const own = Array.from({ length: PROMPT_BLOCKS - TEMPLATE_BLOCKS }, randHash);
        return { pod, blocks, hashes: engines[pod].tmplHashes(t).concat(own) };
      }),
    );
    const ends = [TEMPLATE_BLOCKS];
    while (ends[ends.length - 1] < PROMPT_BLOCKS)
      ends.push(Math.min(PROMPT_BLOCKS, ends[ends.length - 1] + 8 + Math.floor(r() * 49)));
    turns.push(ends);
  }
  const rounds = Math.max(...turns.map((e) => e.length));
  const slice = Math.ceil(steps.length / (rounds + 1));
  applyChunked(ix, steps.slice(0, slice), decode);
  for (let k = 0; k < rounds; k++) {
    for (let c = 0; c < convs.length; c++) {
      const end = turns[c][k];
      if (end === undefined) continue;
      const start = k === 0 ? 0 : turns[c][k - 1];
      for (const h of holders[c]) {
        const stop = Math.min(end, h.blocks);
        if (stop <= start) continue;
        const ev = storedEv(
          h.hashes.slice(start, stop),
          start === 0 ? null : h.hashes[start - 1],
          convs[c].slice(start * BS, stop * BS),
        );
        ix.applyBatch(streams[h.pod], { ts: 0, events: [ev], dpRank: 0 });
      }
    }
    applyChunked(ix, steps.slice((k + 1) * slice, (k + 2) * slice), decode);
  }
  const worst = randTokens(PROMPT_BLOCKS * BS);
  for (let p = 0; p < PODS; p++) {
    const hs = Array.from({ length: PROMPT_BLOCKS }, randHash);
    ix.applyBatch(streams[p], { ts: 0, events: [storedEv(hs, null, worst)], dpRank: 0 });
  }
  return { convs, worst };
}

/** CPU seconds used by this process (all threads: includes GC helpers) */
export function cpuNow(): number {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e6;
}

/**
 * Apply `steps` to `ix` as a subscriber does: batches decoded (by `decode`, untimed) 32 at a time
 * right before they are applied (timed), so apply reads event objects still in cache. Returns the
 * wall and CPU seconds of applying the steps from index `from` on.
 */
export function applyChunked(
  ix: PrefixIndex,
  steps: Step[],
  decode: (payload: Uint8Array) => DecodeResult,
  from = 0,
): { wall: number; cpu: number } {
  let wall = 0;
  let cpu = 0;
  const chunk: EventBatch[] = [];
  for (let i = 0; i < steps.length; i += 32) {
    const end = Math.min(i + 32, steps.length);
    chunk.length = 0;
    for (let j = i; j < end; j++) chunk.push(decode(steps[j].payload).batch);
    const c0 = cpuNow();
    const t0 = performance.now();
    for (let j = i; j < end; j++) ix.applyBatch(steps[j].stream, chunk[j - i]);
    if (i >= from) {
      wall += performance.now() - t0;
      cpu += cpuNow() - c0;
    }
  }
  return { wall: wall / 1000, cpu };
}

/** Block events (stored or removed hashes) in steps[from ..] */
export function blockEventsOf(
  steps: Step[],
  decode: (payload: Uint8Array) => DecodeResult,
  from = 0,
): number {
  let n = 0;
  for (let i = from; i < steps.length; i++)
    for (const e of decode(steps[i].payload).batch.events)
      if (e.type !== "AllBlocksCleared") n += e.blockHashes.length;
  return n;
}
