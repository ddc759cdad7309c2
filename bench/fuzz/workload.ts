/**
 * The soak's valid traffic: one simulated engine per pod, seeded, producing scheduler-step
 * batches as vLLM's prefix cache would: requests share system-prompt templates (skewed
 * popularity) and add unique continuations; a request stores only the blocks its engine does not
 * hold yet, as one chained BlockStored (parent = the last cached block); the cache is an LRU of
 * bounded size whose evictions are BlockRemoved; some blocks are offloaded to CPU and later
 * dropped from it; rarely the whole cache is reset (AllBlocksCleared). The cache is bounded, so
 * the index the soak builds reaches a steady size early and memory can be judged flat.
 */

import type { StreamMatch } from "../../src/index/types.ts";
import { hashFromUint64Parts } from "../../src/protocol/hash.ts";
import type { BlockRemoved, BlockStored, EventBatch, HashKey, KvEvent } from "../../src/protocol/types.ts";

export const BLOCK_SIZE = 16;
export const MODEL = "fuzz/model";

interface Block {
  hash: HashKey;
  tokens: number[];
}

export interface WorkloadOptions {
  /** blocks the engine's GPU cache holds before it evicts */
  capacity: number;
  /** shared prompt templates */
  templates: number;
  /** batches between two AllBlocksCleared (0 = never) */
  clearEvery: number;
}

const DEFAULTS: WorkloadOptions = { capacity: 3000, templates: 32, clearEvery: 20_000 };

export class EngineWorkload {
  private readonly o: WorkloadOptions;
  /** GPU cache: hash -> true in LRU order (first = least recently used) */
  private readonly gpu = new Map<HashKey, true>();
  /** blocks offloaded to CPU, in insertion order */
  private readonly cpu = new Map<HashKey, true>();
  private readonly templateChains: Block[][];
  private steps = 0;
  /** token ids of the last requests (match probes), a ring */
  private readonly recent: number[][] = [];
  private recentAt = 0;

  constructor(
    private readonly rand: () => number,
    options: Partial<WorkloadOptions> = {},
  ) {
    this.o = { ...DEFAULTS, ...options };
    this.templateChains = [];
    for (let t = 0; t < this.o.templates; t++) this.templateChains.push(this.chain(4 + this.int(29)));
  }

  private int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  private hash(): HashKey {
    return hashFromUint64Parts((this.rand() * 4294967296) >>> 0, (this.rand() * 4294967296) >>> 0);
  }

  private chain(blocks: number): Block[] {
    const out: Block[] = [];
    for (let i = 0; i < blocks; i++) {
      const tokens = new Array<number>(BLOCK_SIZE);
      for (let k = 0; k < BLOCK_SIZE; k++) tokens[k] = this.int(151_000);
      out.push({ hash: this.hash(), tokens });
    }
    return out;
  }

  /** Token ids of every template and of the last 64 requests (the soak's match probes). */
  probes(): number[][] {
    return [...this.templateChains.map(concatTokens), ...this.recent];
  }

  /** The next scheduler step's batch (1-4 requests, plus evictions and offloads). */
  next(dpRank: number | null): EventBatch {
    this.steps++;
    const events: KvEvent[] = [];
    if (this.o.clearEvery > 0 && this.steps % this.o.clearEvery === 0) {
      this.gpu.clear();
      this.cpu.clear();
      events.push({ type: "AllBlocksCleared" });
    }
    const requests = 1 + this.int(2);
    for (let r = 0; r < requests; r++) this.request(events);
    if (this.rand() < 0.1) this.offload(events);
    this.evict(events);
    return { ts: 1_760_000_000 + this.steps / 100, events, dpRank };
  }

  private request(events: KvEvent[]): void {
    // template popularity falls off exponentially; some requests share no template at all
    const t = Math.floor(-Math.log(1 - this.rand()) * 6);
    const prefix = t < this.templateChains.length ? this.templateChains[t] : [];
    const blocks = prefix.concat(this.chain(1 + this.int(8)));
    if (this.rand() < 0.05) {
      const tokens = concatTokens(blocks);
      if (this.recent.length < 64) this.recent.push(tokens);
      else this.recent[this.recentAt++ % 64] = tokens;
    }
    let i = 0;
    while (i < blocks.length && this.gpu.has(blocks[i].hash)) {
      // a prefix hit refreshes the block's place in the LRU
      this.gpu.delete(blocks[i].hash);
      this.gpu.set(blocks[i].hash, true);
      i++;
    }
    if (i === blocks.length) return;
    const stored = blocks.slice(i);
    for (const b of stored) this.gpu.set(b.hash, true);
    events.push({
      type: "BlockStored",
      blockHashes: stored.map((b) => b.hash),
      parentBlockHash: i === 0 ? null : blocks[i - 1].hash,
      tokenIds: concatTokens(stored),
      blockSize: BLOCK_SIZE,
      loraId: null,
      medium: "GPU",
      loraName: null,
      extraKeys: null,
      groupIdx: null,
      kvCacheSpecKind: null,
      kvCacheSpecSlidingWindow: null,
      locality: null,
    } satisfies BlockStored);
  }

  /** Copy a few recently used GPU blocks to CPU (tokenless store), or drop old CPU copies. */
  private offload(events: KvEvent[]): void {
    if (this.cpu.size > this.o.capacity / 4) {
      const gone: HashKey[] = [];
      for (const h of this.cpu.keys()) {
        gone.push(h);
        if (gone.length >= 8) break;
      }
      for (const h of gone) this.cpu.delete(h);
      events.push(removed(gone, "CPU"));
      return;
    }
    const picked: HashKey[] = [];
    let skip = this.int(Math.max(1, this.gpu.size));
    for (const h of this.gpu.keys()) {
      if (skip-- > 0) continue;
      if (!this.cpu.has(h)) picked.push(h);
      if (picked.length >= 4) break;
    }
    if (picked.length === 0) return;
    for (const h of picked) this.cpu.set(h, true);
    events.push({
      type: "BlockStored",
      blockHashes: picked,
      parentBlockHash: null,
      tokenIds: [],
      blockSize: BLOCK_SIZE,
      loraId: null,
      medium: "CPU",
      loraName: null,
      extraKeys: null,
      groupIdx: null,
      kvCacheSpecKind: null,
      kvCacheSpecSlidingWindow: null,
      locality: null,
    });
  }

  private evict(events: KvEvent[]): void {
    const over = this.gpu.size - this.o.capacity;
    if (over <= 0) return;
    const gone: HashKey[] = [];
    for (const h of this.gpu.keys()) {
      gone.push(h);
      if (gone.length >= over) break;
    }
    for (const h of gone) this.gpu.delete(h);
    events.push(removed(gone, "GPU"));
  }
}

function concatTokens(blocks: readonly Block[]): number[] {
  const out = new Array<number>(blocks.length * BLOCK_SIZE);
  let n = 0;
  for (const b of blocks) for (let k = 0; k < BLOCK_SIZE; k++) out[n++] = b.tokens[k];
  return out;
}

function removed(hashes: HashKey[], medium: string): BlockRemoved {
  return { type: "BlockRemoved", blockHashes: hashes, medium, groupIdx: null, locality: null };
}

/** A match result in a form both index backends print alike (stream, blocks, per-tier blocks). */
export function matchText(ms: readonly StreamMatch[]): string {
  return ms
    .map((m) => `${m.streamId}:${m.matchedBlocks}:${m.tiers.GPU},${m.tiers.CPU},${m.tiers.STORAGE}`)
    .join(" ");
}
