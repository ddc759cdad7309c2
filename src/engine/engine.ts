import { hashFromBytes, hashFromInt64NegParts, hashFromUint64Parts, hashToText } from "../protocol/hash.ts";
import type { HashKey } from "../protocol/types.ts";
import type { Tokenizer } from "../tokenize/types.ts";
import type { Logger } from "../util/log.ts";
import { seededRandom } from "../util/rng.ts";
import { blockDigest, type Digest, digestUint64Parts, rootDigest } from "./block-hash.ts";
import { HybridKvCache, SLIDING_GROUP } from "./hybrid-cache.ts";
import { KvCache } from "./kv-cache.ts";
import { EngineMetrics } from "./metrics.ts";
import type { EngineOptions } from "./options.ts";
import { EventPublisher, offsetEndpoint } from "./publisher.ts";
import { Scheduler } from "./scheduler.ts";

/** One data-parallel rank: its own KV cache, scheduler and event publisher. */
export interface Rank {
  index: number;
  cache: KvCache;
  scheduler: Scheduler;
  publisher: EventPublisher | null;
}

/** Common English words: each is one token with a leading space in BPE vocabularies, so the
 * synthetic output re-tokenizes to the same ids (multi-turn prompts then hit the cache). */
const WORDS =
  "the of and to in is that it was for on are as with his they at be this from have or by one had not but what all were when we there can an your which their said if do will each about how up out them then she many some so these would other into has more her two like him see time could no make than first been its who now people my made over did down only way find use may water long little very after words called just where most know".split(
    " ",
  );

const vocabs = new WeakMap<Tokenizer, Promise<number[]>>();

/** Token ids of the synthetic output: computed once per tokenizer, shared by every engine/replica. */
function outputVocab(tokenizer: Tokenizer): Promise<number[]> {
  let v = vocabs.get(tokenizer);
  if (v === undefined) {
    v = buildVocab(tokenizer);
    vocabs.set(tokenizer, v);
    v.catch(() => vocabs.delete(tokenizer));
  }
  return v;
}

async function buildVocab(tokenizer: Tokenizer): Promise<number[]> {
  const ids: number[] = [];
  for (const w of WORDS) {
    const enc = await tokenizer.encodePrompt(` ${w}`, false);
    if (enc.length === 1 && !ids.includes(enc[0])) ids.push(enc[0]);
  }
  if (ids.length < 8) {
    // an unusual tokenizer: fall back to whatever a plain sentence encodes to
    const enc = await tokenizer.encodePrompt(` ${WORDS.join(" ")}`, false);
    for (const id of enc) if (!ids.includes(id) && !tokenizer.eosTokenIds.includes(id)) ids.push(id);
  }
  return ids;
}

export class MockEngine {
  readonly o: EngineOptions;
  readonly tokenizer: Tokenizer;
  readonly ranks: Rank[];
  readonly metrics: EngineMetrics;
  readonly log: Logger;
  readonly root: Digest;
  private readonly rng: () => number;
  private vocab: number[] = [];
  private rr = 0;
  private reqCounter = 0;
  readonly started = Date.now();

  constructor(o: EngineOptions, tokenizer: Tokenizer, log: Logger, replicaIndex: number) {
    this.o = o;
    this.tokenizer = tokenizer;
    this.log = log;
    this.rng = seededRandom(o.seed * 7919 + replicaIndex);
    this.root = rootDigest(o.hashSeed);
    // SGLang and TensorRT-LLM (Dynamo) publish signed 64-bit hashes
    const hashOf = o.hashFormat === "bytes" ? bytesHash : o.flavor === "vllm" ? intHash : signedHash;
    this.ranks = [];
    for (let r = 0; r < o.dataParallelSize; r++) {
      const co = {
        numGpuBlocks: o.numGpuBlocks,
        numCpuBlocks: o.numCpuBlocks,
        blockSize: o.blockSize,
        hashOf,
        removals: o.removedEvents,
        // SGLang 2025 publishes a page's hash of its own tokens (docs/engines.md)
        ...(o.flavor === "sglang-2025" ? { contentHash } : {}),
      };
      const cache =
        o.hybridWindow > 0 ? new HybridKvCache({ ...co, window: o.hybridWindow }) : new KvCache(co);
      const dpRank = o.dataParallelStartRank + r;
      const publisher =
        o.eventsEndpoint === null
          ? null
          : new EventPublisher({
              endpoint: offsetEndpoint(o.eventsEndpoint, dpRank),
              bind: o.eventsBind,
              replayEndpoint: o.replayEndpoint === null ? null : offsetEndpoint(o.replayEndpoint, dpRank),
              topic: o.topic,
              format: o.eventFormat,
              flavor: o.flavor,
              bufferSteps: o.replayBufferSteps,
              dpRank,
              dropRate: o.dropEventRate,
              failRate: o.failEventRate,
              loseRate: o.loseEventRate,
              random: seededRandom(o.seed * 104729 + replicaIndex * 131 + r + 1),
              log,
            });
      const rank: Rank = { index: r, cache, scheduler: null as unknown as Scheduler, publisher };
      const labels = { model_name: o.model, engine: String(r) };
      rank.scheduler = new Scheduler(
        cache,
        {
          maxNumSeqs: o.maxNumSeqs,
          maxNumBatchedTokens: o.maxNumBatchedTokens,
          maxWaiting: o.maxWaiting,
          root: this.root,
          timing: {
            stepMs: o.stepMs,
            prefillMsPerToken: o.prefillMsPerToken,
            decodeMsPerSeq: o.decodeMsPerSeq,
            loadMsPerToken: o.loadMsPerToken,
            speed: o.speed,
          },
        },
        {
          onEvents: (events) => publisher?.publish(events),
          onSchedule: (i) => {
            const gpuQueried = i.queriedTokens;
            this.metrics.prefixQueries.inc(labels, gpuQueried);
            this.metrics.prefixHits.inc(labels, i.cachedTokensGpu);
            if (o.numCpuBlocks > 0) {
              this.metrics.externalPrefixQueries.inc(labels, gpuQueried - i.cachedTokensGpu);
            }
          },
          onCpuHit: (n) => this.metrics.externalPrefixHits.inc(labels, n),
          onFirstToken: (s) => this.metrics.ttft.observe(labels, s),
          onGenerated: (n) => this.metrics.generationTokens.inc(labels, n),
          onPromptTokens: (n) => this.metrics.promptTokens.inc(labels, n),
          onPreempt: () => this.metrics.preemptions.inc(labels),
        },
      );
      this.ranks.push(rank);
    }
    this.metrics = new EngineMetrics(
      o.model,
      this.ranks.map((r) => ({
        running: () => r.scheduler.numRunning,
        waiting: () => r.scheduler.numWaiting,
        usage: () => r.cache.usage(),
      })),
      {
        block_size: String(o.blockSize),
        num_gpu_blocks: String(o.numGpuBlocks),
        num_cpu_blocks: String(o.numCpuBlocks),
        enable_prefix_caching: "True",
        prefix_caching_hash_algo: "sha256",
      },
    );
  }

  async init(): Promise<void> {
    this.vocab = await outputVocab(this.tokenizer);
    for (const r of this.ranks) await r.publisher?.start();
  }

  /** The LoRA adapter id (1-based, as vLLM's lora_int_id) for a model name; null = base; undefined = unknown. */
  loraOf(model: string | undefined): { loraId: number | null; loraName: string | null } | undefined {
    if (model === undefined || model === this.o.model) return { loraId: null, loraName: null };
    const i = this.o.loraModules.indexOf(model);
    if (i < 0) return undefined;
    return { loraId: i + 1, loraName: model };
  }

  /** Rank for a request: the X-data-parallel-rank header if given, else least-loaded / round-robin. */
  pickRank(header: string | undefined): Rank | string {
    if (header !== undefined && header !== "") {
      const r = Number(header);
      if (!Number.isInteger(r) || r < 0 || r >= this.ranks.length) {
        return `X-data-parallel-rank must be an integer in [0, ${this.ranks.length - 1}], got ${JSON.stringify(header)}`;
      }
      return this.ranks[r];
    }
    const n = this.ranks.length;
    const start = this.rr++ % n;
    if (this.o.dpRouting === "round-robin") return this.ranks[start];
    let best = this.ranks[start];
    for (let k = 1; k < n; k++) {
      const r = this.ranks[(start + k) % n];
      if (r.scheduler.load < best.scheduler.load) best = r;
    }
    return best;
  }

  nextId(prefix: string): string {
    return `${prefix}-${(this.started % 1e9).toString(36)}${(this.reqCounter++).toString(36)}`;
  }

  /**
   * The synthetic output: with max_tokens, exactly max_tokens tokens (finish "length"); without,
   * a seeded-random length in [minOutputTokens, maxOutputTokens] (capped by the context) whose
   * last token is EOS (finish "stop").
   */
  planOutput(promptLen: number, maxTokens: number | null): { output: number[]; finish: "stop" | "length" } {
    const room = this.o.maxModelLen - promptLen;
    const eos = this.tokenizer.eosTokenIds[0];
    let n: number;
    let finish: "stop" | "length";
    if (maxTokens !== null) {
      n = maxTokens;
      finish = "length";
    } else {
      const span = this.o.maxOutputTokens - this.o.minOutputTokens + 1;
      const natural = this.o.minOutputTokens + Math.floor(this.rng() * span);
      if (natural <= room) {
        n = natural;
        finish = eos === undefined ? "length" : "stop";
      } else {
        n = room;
        finish = "length";
      }
    }
    const output: number[] = [];
    for (let i = 0; i < n; i++) output.push(this.vocab[Math.floor(this.rng() * this.vocab.length)]);
    if (finish === "stop" && eos !== undefined) output[n - 1] = eos;
    return { output, finish };
  }

  /**
   * Ground truth of one rank's cache: one entry per cached hash with every tier holding it (the
   * full-attention group of a hybrid model), and a hybrid model's sliding-window group's hashes.
   */
  kvCacheSnapshot(rank: Rank): {
    blocks: Array<{ hash: string; tiers: string[] }>;
    groups?: Array<{ group: number; kind: string; window: number; hashes: string[] }>;
  } {
    const c = rank.cache;
    const blocks = c.snapshot().map((b) => ({ hash: hashToText(c.hashOf(b.digest)), tiers: b.tiers }));
    if (!(c instanceof HybridKvCache)) return { blocks };
    const hashes = c.slidingSnapshot().map((b) => hashToText(c.hashOf(b.digest)));
    return { blocks, groups: [{ group: SLIDING_GROUP, kind: "sliding_window", window: c.window, hashes }] };
  }

  /** Resolves when every rank is idle and all its events are handed to ZeroMQ. */
  async quiesce(): Promise<void> {
    for (const r of this.ranks) {
      await r.scheduler.idle();
      await r.publisher?.flushed();
    }
  }

  async close(): Promise<void> {
    for (const r of this.ranks) r.scheduler.close();
    for (const r of this.ranks) await r.publisher?.close();
  }
}

/** SGLang 2025's page hash: the page's tokens alone, signed 64-bit (no parent, no seed). */
const CONTENT_ROOT = rootDigest("sglang-2025-content");
function contentHash(tokens: ArrayLike<number>, start: number, blockSize: number): HashKey {
  return signedHash(blockDigest(CONTENT_ROOT, tokens, start, blockSize, ""));
}

function intHash(d: Digest): HashKey {
  const { hi, lo } = digestUint64Parts(d);
  return hashFromUint64Parts(hi, lo);
}

function signedHash(d: Digest): HashKey {
  const { hi, lo } = digestUint64Parts(d);
  return hi >= 0x80000000 ? hashFromInt64NegParts(hi, lo) : hashFromUint64Parts(hi, lo);
}

function bytesHash(d: Digest): HashKey {
  return hashFromBytes(Buffer.from(d, "latin1"));
}
