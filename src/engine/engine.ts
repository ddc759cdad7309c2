import { hashFromBytes, hashFromUint64Parts, hashToText } from "../protocol/hash.ts";
import type { HashKey } from "../protocol/types.ts";
import { loadTokenizer } from "../tokenize/hf-tokenizer.ts";
import type { Tokenizer } from "../tokenize/types.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { seededRandom } from "../util/rng.ts";
import { type Digest, digestUint64Parts, rootDigest } from "./block-hash.ts";
import { startHttpServer } from "./http.ts";
import { KvCache } from "./kv-cache.ts";
import { EngineMetrics } from "./metrics.ts";
import { DEFAULT_ENGINE_OPTIONS, type EngineOptions, validateOptions } from "./options.ts";
import { EventPublisher, offsetEndpoint, pubShouldBind, withHost } from "./publisher.ts";
import { Scheduler } from "./scheduler.ts";

/** One data-parallel rank: its own KV cache, scheduler and event publisher. */
export interface Rank {
  index: number;
  cache: KvCache;
  scheduler: Scheduler;
  publisher: EventPublisher | null;
}

const tokenizers = new Map<string, Promise<Tokenizer>>();

/** Tokenizers are loaded once per process and shared by every engine/replica. */
export function sharedTokenizer(model: string, dir: string | null): Promise<Tokenizer> {
  const key = `${model}\u0000${dir ?? ""}`;
  let t = tokenizers.get(key);
  if (t === undefined) {
    t = loadTokenizer(model, dir ?? undefined);
    tokenizers.set(key, t);
    t.catch(() => tokenizers.delete(key));
  }
  return t;
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
    const hashOf = o.hashFormat === "int" ? intHash : bytesHash;
    this.ranks = [];
    for (let r = 0; r < o.dataParallelSize; r++) {
      const cache = new KvCache({
        numGpuBlocks: o.numGpuBlocks,
        numCpuBlocks: o.numCpuBlocks,
        blockSize: o.blockSize,
        hashOf,
        removals: o.removedEvents,
      });
      const dpRank = r;
      const publisher =
        o.eventsEndpoint === null
          ? null
          : new EventPublisher({
              endpoint: offsetEndpoint(o.eventsEndpoint, r),
              bind: o.eventsBind,
              replayEndpoint: o.replayEndpoint === null ? null : offsetEndpoint(o.replayEndpoint, r),
              topic: o.topic,
              format: o.eventFormat,
              bufferSteps: o.replayBufferSteps,
              dpRank,
              dropRate: o.dropEventRate,
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

  /** Ground truth of one rank's cache: one entry per cached hash with every tier holding it. */
  kvCacheSnapshot(rank: Rank): { blocks: Array<{ hash: string; tiers: string[] }> } {
    return {
      blocks: rank.cache
        .snapshot()
        .map((b) => ({ hash: hashToText(rank.cache.hashOf(b.digest)), tiers: b.tiers })),
    };
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

function intHash(d: Digest): HashKey {
  const { hi, lo } = digestUint64Parts(d);
  return hashFromUint64Parts(hi, lo);
}

function bytesHash(d: Digest): HashKey {
  return hashFromBytes(Buffer.from(d, "latin1"));
}

export interface RunningEngine {
  httpUrl: string;
  /** events PUB endpoint of rank 0 (null when events are off) */
  eventsEndpoint: string | null;
  replayEndpoint: string | null;
  /** per data-parallel rank */
  eventsEndpoints: Array<string | null>;
  replayEndpoints: Array<string | null>;
  engine: MockEngine;
  close(): Promise<void>;
}

export type StartOptions = Partial<EngineOptions> & { log?: Logger; replicaIndex?: number };

/** Start one engine (all its DP ranks and its HTTP server) in this process. */
export async function startEngine(opts: StartOptions = {}): Promise<RunningEngine> {
  const { log: givenLog, replicaIndex = 0, ...rest } = opts;
  const o: EngineOptions = { ...DEFAULT_ENGINE_OPTIONS, ...rest };
  validateOptions(o);
  const log = givenLog ?? createLogger("mock-engine");
  const tokenizer = await sharedTokenizer(o.model, o.tokenizer);
  const engine = new MockEngine(o, tokenizer, log, replicaIndex);
  let server: Awaited<ReturnType<typeof startHttpServer>> | null = null;
  try {
    await engine.init();
    server = await startHttpServer(engine, o.host, o.port);
  } catch (err) {
    await engine.close();
    throw err;
  }
  const srv = server;
  const eventsEndpoints = engine.ranks.map((r) => r.publisher?.eventsEndpoint ?? null);
  const replayEndpoints = engine.ranks.map((r) => r.publisher?.replayEndpoint ?? null);
  log.info(
    {
      event: "engine.started",
      http: srv.url,
      events: eventsEndpoints,
      replay: replayEndpoints,
      model: o.model,
      loras: o.loraModules,
      blockSize: o.blockSize,
      numGpuBlocks: o.numGpuBlocks,
      numCpuBlocks: o.numCpuBlocks,
      dataParallelSize: o.dataParallelSize,
      hashFormat: o.hashFormat,
      eventFormat: o.eventFormat,
      hashSeeded: o.hashSeed !== null,
    },
    "mock engine started",
  );
  let closing: Promise<void> | null = null;
  return {
    httpUrl: srv.url,
    eventsEndpoint: eventsEndpoints[0],
    replayEndpoint: replayEndpoints[0],
    eventsEndpoints,
    replayEndpoints,
    engine,
    close() {
      closing ??= (async () => {
        await srv.close();
        await engine.close();
        log.info({ event: "engine.stopped", http: srv.url }, "mock engine stopped");
      })();
      return closing;
    },
  };
}

export type ReplicaOptions = StartOptions & {
  replicas?: number;
  /** every port (HTTP, events, replay) of replica i is offset by i * portStride */
  portStride?: number;
  /** replica i binds HTTP and ZMQ on hosts[i] */
  hosts?: string[];
};

/** Per-replica options: port + i*stride, host i. */
export function replicaOptions(opts: ReplicaOptions, i: number): StartOptions {
  const { replicas: _r, portStride = 0, hosts, ...base } = opts;
  const o: StartOptions = { ...base, replicaIndex: i };
  const shift = i * portStride;
  const host = hosts?.[i];
  if (o.port !== undefined && o.port !== 0) o.port += shift;
  else if (o.port === undefined) o.port = DEFAULT_ENGINE_OPTIONS.port + shift;
  const ep = (e: string | null | undefined, d: string | null): string | null => {
    const v = e === undefined ? d : e;
    if (v === null) return null;
    const shifted = offsetEndpoint(v, shift);
    return host === undefined ? shifted : withHost(shifted, host);
  };
  const events =
    opts.eventsEndpoint === undefined ? DEFAULT_ENGINE_OPTIONS.eventsEndpoint : opts.eventsEndpoint;
  // the bind/connect decision is made on the endpoint as given ("tcp://*:5557" binds), before
  // the replica's host replaces the wildcard
  if (host !== undefined && events !== null && (opts.eventsBind ?? null) === null) {
    o.eventsBind = pubShouldBind(events);
  }
  o.eventsEndpoint = ep(opts.eventsEndpoint, DEFAULT_ENGINE_OPTIONS.eventsEndpoint);
  o.replayEndpoint = ep(opts.replayEndpoint, DEFAULT_ENGINE_OPTIONS.replayEndpoint);
  if (host !== undefined) o.host = host;
  return o;
}

/** Start N independent engines in this process (replica i on every port + i*stride / host i). */
export async function startEngines(opts: ReplicaOptions): Promise<RunningEngine[]> {
  const n = opts.replicas ?? opts.hosts?.length ?? 1;
  if (!Number.isInteger(n) || n < 1) throw new Error("replicas must be >= 1");
  if (opts.hosts !== undefined && opts.hosts.length < n)
    throw new Error(`--hosts lists ${opts.hosts.length} hosts for ${n} replicas`);
  const stride = opts.portStride ?? 0;
  if (n > 1 && stride === 0 && opts.hosts === undefined && opts.port !== 0) {
    throw new Error("several replicas need --port-stride > 0, --hosts, or ephemeral ports");
  }
  const log = opts.log ?? createLogger("mock-engine");
  const out: RunningEngine[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const ro = replicaOptions(opts, i);
      ro.log = n > 1 ? log.child({ replica: i }) : log;
      out.push(await startEngine(ro));
    }
  } catch (err) {
    await Promise.all(out.map((e) => e.close()));
    throw err;
  }
  return out;
}
