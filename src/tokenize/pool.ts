/**
 * TokenizerPool: a Tokenizer that keeps long encodes off the event loop.
 *
 * Chat rendering, segment splitting and the segment cache stay on the calling thread; only the
 * text that is not cached is encoded, inline when it is short (≤ `inlineMaxChars`), else on a
 * piscina worker thread that loads the same tokenizer.json. Workers start lazily, a job waits
 * in a bounded queue when all workers are busy; when the queue is full the job is encoded inline
 * (`onFull: "inline"`, default) or rejected with a TokenizerError "overloaded". Piscina runs the
 * threads (start, task hand-off, transfer, replacing a thread that dies); this class decides
 * what goes to them and what happens while none has loaded the tokenizer.
 * Rendering is not free: ~60 µs for a 1k-token two-message Qwen3 chat, about a fifth of the
 * gateway's CPU per request in bench:gateway; rendering in the workers too is the next lever for
 * the gateway's overhead.
 */
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import type { Registry } from "prom-client";
import { createLogger, type Logger } from "../util/log.ts";
import { TokenizerError, type TokenizerErrorCode } from "./errors.ts";
import type { HfTokenizer } from "./hf-tokenizer.ts";
import { type TokenizerMetrics, tokenizerMetrics } from "./metrics.ts";
import type { ChatRequestLike, Tokenizer } from "./types.ts";
import type { WorkerRequest, WorkerResponse } from "./worker.ts";

export interface TokenizerPoolOptions {
  /** worker threads (default: 1 on ≤ 2 cores, else 2) */
  size?: number;
  /** jobs waiting for a worker before `onFull` applies (default 64) */
  maxQueue?: number;
  /** uncached text up to this many chars is encoded inline (default 4096) */
  inlineMaxChars?: number;
  onFull?: "inline" | "reject";
  /** Prometheus registry for kvsync_tokenizer_* metrics */
  metrics?: Registry;
  log?: Logger;
}

export interface TokenizerPoolStats {
  inline: number;
  /** long encodes done inline because no worker had loaded the tokenizer yet */
  coldInline: number;
  offloaded: number;
  inlineFallbacks: number;
  rejected: number;
  queued: number;
  workers: number;
  workerFailures: number;
  /** workers failed MAX_CONSECUTIVE_FAILURES times in a row: everything is encoded inline */
  workersDisabled: boolean;
}

/** one piscina pool and whether its threads have loaded the tokenizer */
interface Workers {
  pool: Piscina;
  /** a warm-up task has answered since the pool started or last lost a thread */
  ready: boolean;
  warmed: Promise<void>;
  /** destroyed by this class (close, load failure, given up): its rejections are not failures */
  gone: boolean;
}

/** consecutive worker failures (without a success in between) after which workers are given up */
const MAX_CONSECUTIVE_FAILURES = 3;

const WORKER_FILE = fileURLToPath(
  new URL(import.meta.url.endsWith(".ts") ? "./worker.ts" : "./worker.js", import.meta.url),
);

/**
 * Running from .ts sources, the threads load worker.ts through tsx and nothing else: on Node 20 a
 * worker's second `--import` of a .ts file (a test's setup) runs before tsx's hooks are in place.
 * From the built dist/, the threads get the process's own flags (piscina's default).
 */
const WORKER_EXEC_ARGV = import.meta.url.endsWith(".ts")
  ? ["--import", import.meta.resolve("tsx")]
  : undefined;

export class TokenizerPool implements Tokenizer {
  readonly base: HfTokenizer;
  private readonly size: number;
  private readonly maxQueue: number;
  private readonly inlineMaxChars: number;
  private readonly onFull: "inline" | "reject";
  private workers: Workers | null = null;
  /** offloaded jobs not yet answered: running (up to size) and queued */
  private inFlight = 0;
  private closed = false;
  private readonly metrics: TokenizerMetrics | null;
  private readonly log: Logger;
  private consecutiveFailures = 0;
  private workersDisabled = false;
  private readonly counters = {
    inline: 0,
    coldInline: 0,
    offloaded: 0,
    inlineFallbacks: 0,
    rejected: 0,
    workerFailures: 0,
  };

  constructor(base: HfTokenizer, opts: TokenizerPoolOptions = {}) {
    this.base = base;
    const cores =
      (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 2;
    this.size = Math.max(1, Math.floor(opts.size ?? (cores <= 2 ? 1 : 2)));
    this.maxQueue = Math.max(0, Math.floor(opts.maxQueue ?? 64));
    this.inlineMaxChars = Math.max(0, opts.inlineMaxChars ?? 4096);
    this.onFull = opts.onFull ?? "inline";
    this.metrics = opts.metrics ? tokenizerMetrics(opts.metrics) : null;
    this.log = opts.log ?? createLogger("tokenize");
  }

  private count(path: "inline" | "worker" | "fallback" | "rejected"): void {
    this.metrics?.encodes.inc({ model: this.base.model, path });
  }

  get model(): string {
    return this.base.model;
  }

  get eosTokenIds(): number[] {
    return this.base.eosTokenIds;
  }

  /**
   * Start all workers and wait until they have loaded the tokenizer. Optional: workers also start
   * on the first long encode, which is done inline while they load.
   */
  async warm(): Promise<void> {
    this.assertOpen();
    if (this.workersDisabled) {
      throw new TokenizerError("internal", "tokenizer workers were given up after repeated failures");
    }
    await this.ensureWorkers().warmed;
  }

  async encodePrompt(prompt: string, addSpecialTokens = true): Promise<number[]> {
    if (typeof prompt !== "string") throw new TokenizerError("bad_request", "prompt must be a string");
    return this.encodeText(prompt, addSpecialTokens);
  }

  async encodeChat(req: ChatRequestLike): Promise<number[]> {
    return this.encodeText(this.base.renderChatSync(req), req.add_special_tokens ?? false);
  }

  async renderChat(req: ChatRequestLike): Promise<string> {
    return this.base.renderChatSync(req);
  }

  async decode(ids: number[], skipSpecialTokens = false): Promise<string> {
    return this.base.decodeSync(ids, skipSpecialTokens);
  }

  stats(): TokenizerPoolStats {
    return {
      ...this.counters,
      queued: Math.max(0, this.inFlight - this.size),
      workers: this.workers?.pool.threads.length ?? 0,
      workersDisabled: this.workersDisabled,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.dropWorkers();
  }

  private assertOpen(): void {
    if (this.closed) throw new TokenizerError("closed", "tokenizer pool closed");
  }

  private async encodeText(text: string, addSpecialTokens: boolean): Promise<number[]> {
    this.assertOpen();
    const segs = this.base.segmentsOf(text, addSpecialTokens);
    if (segs === null) {
      if (text.length <= this.inlineMaxChars) {
        this.counters.inline++;
        this.count("inline");
        return this.base.encodeRaw(text, addSpecialTokens);
      }
      const [ids] = await this.offload([text], addSpecialTokens);
      return Array.from(ids);
    }
    const { ids, missing } = this.base.lookup(segs);
    if (this.metrics) {
      this.metrics.segments.inc({ model: this.base.model, result: "hit" }, ids.size);
      this.metrics.segments.inc({ model: this.base.model, result: "miss" }, missing.length);
    }
    let missChars = 0;
    for (const s of missing) missChars += s.length;
    if (missChars <= this.inlineMaxChars) {
      this.counters.inline++;
      this.count("inline");
      this.base.encodeMissing(missing, ids);
    } else {
      this.base.addEncoded(missing, await this.offload(missing, false), ids);
    }
    return this.base.assemble(segs, ids);
  }

  private encodeInline(texts: string[], addSpecialTokens: boolean): Uint32Array[] {
    return texts.map((t) => Uint32Array.from(this.base.encodeRaw(t, addSpecialTokens)));
  }

  /**
   * Encode `texts` in a worker; inline while no worker is ready (they are started here) or when
   * workers were given up; when the queue is full: inline or reject (`onFull`).
   */
  private async offload(texts: string[], addSpecialTokens: boolean): Promise<Uint32Array[]> {
    const w = this.workersDisabled ? null : this.ensureWorkers();
    if (w === null || !w.ready) {
      this.counters.coldInline++;
      this.count("inline");
      return this.encodeInline(texts, addSpecialTokens);
    }
    if (this.inFlight >= this.size + this.maxQueue) {
      if (this.onFull === "reject") {
        this.counters.rejected++;
        this.count("rejected");
        throw new TokenizerError("overloaded", `tokenizer pool queue full (${this.maxQueue} waiting)`);
      }
      this.counters.inlineFallbacks++;
      this.count("fallback");
      return this.encodeInline(texts, addSpecialTokens);
    }
    this.counters.offloaded++;
    this.count("worker");
    this.inFlight++;
    this.setQueueDepth();
    try {
      const res = await this.run(w, { dir: this.base.dir, texts, addSpecialTokens });
      if ("error" in res) throw new TokenizerError(res.error.code as TokenizerErrorCode, res.error.message);
      return res.ids;
    } catch (e) {
      // the pool went away under the job because workers were given up: the job still gets its ids
      if (e instanceof GoneError && this.workersDisabled && !this.closed) {
        return this.encodeInline(texts, addSpecialTokens);
      }
      throw e;
    } finally {
      this.inFlight--;
      this.setQueueDepth();
    }
  }

  private setQueueDepth(): void {
    this.metrics?.queueDepth.set({ model: this.base.model }, Math.max(0, this.inFlight - this.size));
  }

  /** one task on `w`: a rejection is a thread failure, counted here, unless the pool was dropped */
  private async run(w: Workers, task: WorkerRequest): Promise<WorkerResponse> {
    try {
      const res = (await w.pool.run(task)) as WorkerResponse;
      if (!("error" in res) || !task.warm) this.consecutiveFailures = 0;
      return res;
    } catch (e) {
      if (this.closed) throw new TokenizerError("closed", "tokenizer pool closed");
      if (w.gone) throw new GoneError();
      const err = new TokenizerError("internal", `tokenizer worker failed: ${(e as Error).message}`, {
        cause: e,
      });
      this.workerFailed(w, err, true);
      throw err;
    }
  }

  /** the current pool, started (with its warm-up) if there is none */
  private ensureWorkers(): Workers {
    if (this.workers !== null) return this.workers;
    const pool = new Piscina({
      filename: WORKER_FILE,
      minThreads: this.size,
      maxThreads: this.size,
      idleTimeout: Number.POSITIVE_INFINITY,
      execArgv: WORKER_EXEC_ARGV,
    });
    const w: Workers = { pool, ready: false, warmed: Promise.resolve(), gone: false };
    this.workers = w;
    this.warmUp(w);
    return w;
  }

  /** one warm-up task per thread: the pool is ready once they have loaded the tokenizer */
  private warmUp(w: Workers): void {
    w.ready = false;
    const tasks = Array.from({ length: this.size }, () => this.run(w, { dir: this.base.dir, warm: true }));
    w.warmed = Promise.all(tasks).then((answers) => {
      const failed = answers.find((a) => "error" in a);
      if (failed !== undefined && "error" in failed) {
        // could not even load the tokenizer: a failed worker, replaced on the next long encode
        const err = new TokenizerError("internal", `loading the tokenizer failed: ${failed.error.message}`);
        this.workerFailed(w, err, false);
        throw err;
      }
      if (!w.gone) w.ready = true;
    });
    w.warmed.catch(() => {}); // observed via warm() when someone waits
  }

  private workerFailed(w: Workers, err: Error, threadDied: boolean): void {
    if (w.gone) return;
    this.counters.workerFailures++;
    this.consecutiveFailures++;
    this.metrics?.workerFailures.inc({ model: this.base.model });
    this.log.warn(
      { event: "tokenize.worker_failed", model: this.base.model, err: err.message },
      "tokenizer worker failed; it is replaced on the next long encode",
    );
    if (this.consecutiveFailures >= MAX_CONSECUTIVE_FAILURES) {
      this.workersDisabled = true;
      this.log.error(
        { event: "tokenize.workers_disabled", model: this.base.model, failures: this.consecutiveFailures },
        "tokenizer workers keep failing; encoding inline from now on",
      );
      void this.dropWorkers();
    } else if (threadDied) {
      // piscina has started a replacement thread: long encodes are inline until it has loaded
      this.warmUp(w);
    } else {
      void this.dropWorkers();
    }
  }

  private async dropWorkers(): Promise<void> {
    const w = this.workers;
    if (w === null) return;
    this.workers = null;
    w.gone = true;
    w.ready = false;
    await w.pool.destroy();
  }
}

/** a job's pool was destroyed by this class while the job waited or ran */
class GoneError extends Error {}
