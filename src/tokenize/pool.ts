/**
 * TokenizerPool: a Tokenizer that keeps long encodes off the event loop.
 *
 * Chat rendering, segment splitting and the segment cache stay on the calling thread; only the
 * text that is not cached is encoded, inline when it is short (≤ `inlineMaxChars`), else in a
 * `worker_threads` worker that loads the same tokenizer.json. Workers start lazily, a job waits
 * in a bounded queue when all workers are busy; when the queue is full the job is encoded inline
 * (`onFull: "inline"`, default) or rejected with a TokenizerError "overloaded".
 * Rendering is not free: ~60 µs for a 1k-token two-message Qwen3 chat, about a fifth of the
 * gateway's CPU per request in bench:gateway; rendering in the workers too is the next lever for
 * the gateway's overhead.
 */
import { Worker } from "node:worker_threads";
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

interface Job {
  req: WorkerRequest;
  resolve: (ids: Uint32Array[]) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job: Job | null;
  /** the worker has loaded the tokenizer (answered its warm-up job) */
  ready: boolean;
  warmed: Promise<void>;
}

/** consecutive worker failures (without a success in between) after which workers are given up */
const MAX_CONSECUTIVE_FAILURES = 3;

/**
 * Worker bootstrap for running from .ts sources: on Node 20 `execArgv: ["--import", "tsx"]` does not
 * get tsx's loader hooks in place before a worker's entry module loads, so the worker registers tsx
 * itself and then imports worker.ts. From the built dist/ the .js worker is started directly.
 */
const TS_BOOTSTRAP = `
const { workerData } = require("node:worker_threads");
import(workerData.tsxApi)
  .then((m) => { m.register(); return import(workerData.entry); })
  .catch((e) => { setImmediate(() => { throw e; }); });
`;

function startWorker(): Worker {
  if (import.meta.url.endsWith(".ts")) {
    return new Worker(TS_BOOTSTRAP, {
      eval: true,
      workerData: {
        tsxApi: import.meta.resolve("tsx/esm/api"),
        entry: new URL("./worker.ts", import.meta.url).href,
      },
    });
  }
  return new Worker(new URL("./worker.js", import.meta.url));
}

export class TokenizerPool implements Tokenizer {
  readonly base: HfTokenizer;
  private readonly size: number;
  private readonly maxQueue: number;
  private readonly inlineMaxChars: number;
  private readonly onFull: "inline" | "reject";
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
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
   * Start all workers and wait until each has loaded the tokenizer. Optional: workers also start
   * on the first long encode, which is done inline while they load.
   */
  async warm(): Promise<void> {
    this.assertOpen();
    if (this.workersDisabled) {
      throw new TokenizerError("internal", "tokenizer workers were given up after repeated failures");
    }
    this.ensureWorkers();
    await Promise.all(this.slots.map((s) => s.warmed));
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
      queued: this.queue.length,
      workers: this.slots.length,
      workersDisabled: this.workersDisabled,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new TokenizerError("closed", "tokenizer pool closed");
    for (const job of this.queue.splice(0)) job.reject(err);
    const slots = this.slots.splice(0);
    for (const s of slots) {
      s.job?.reject(err);
      s.job = null;
    }
    await Promise.all(slots.map((s) => s.worker.terminate()));
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
    if (this.workersDisabled || !this.slots.some((s) => s.ready)) {
      this.ensureWorkers();
      this.counters.coldInline++;
      this.count("inline");
      return this.encodeInline(texts, addSpecialTokens);
    }
    const idle = this.slots.some((s) => s.ready && s.job === null);
    if (!idle && this.queue.length >= this.maxQueue) {
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
    return this.submit({ id: 0, dir: this.base.dir, texts, addSpecialTokens });
  }

  private submit(req: WorkerRequest): Promise<Uint32Array[]> {
    return new Promise<Uint32Array[]>((resolve, reject) => {
      req.id = this.nextId++;
      this.queue.push({ req, resolve, reject });
      this.pump();
      this.metrics?.queueDepth.set({ model: this.base.model }, this.queue.length);
    });
  }

  private ensureWorkers(): void {
    while (!this.closed && !this.workersDisabled && this.slots.length < this.size) this.spawn();
  }

  private spawn(): Slot {
    const worker = startWorker();
    worker.unref();
    let markReady!: () => void;
    let markFailed!: (e: Error) => void;
    const warmed = new Promise<void>((res, rej) => {
      markReady = res;
      markFailed = rej;
    });
    warmed.catch(() => {}); // observed via warm() when someone waits
    const slot: Slot = { worker, job: null, ready: false, warmed };
    // first job: load the tokenizer in the worker
    slot.job = {
      req: { id: this.nextId++, dir: this.base.dir, warm: true },
      resolve: () => {
        slot.ready = true;
        markReady();
      },
      reject: markFailed,
    };
    worker.postMessage(slot.job.req);
    const fail = (e: Error) => {
      const i = this.slots.indexOf(slot);
      if (i === -1) return; // already removed (close or earlier failure)
      this.slots.splice(i, 1);
      this.counters.workerFailures++;
      this.consecutiveFailures++;
      this.metrics?.workerFailures.inc({ model: this.base.model });
      this.log.warn(
        {
          event: "tokenize.worker_failed",
          model: this.base.model,
          err: e.message,
          inFlight: slot.job !== null,
        },
        "tokenizer worker failed; it is replaced on the next long encode",
      );
      const err = new TokenizerError("internal", `tokenizer worker failed: ${e.message}`, { cause: e });
      const job = slot.job;
      slot.job = null;
      markFailed(err);
      job?.reject(err);
      void worker.terminate();
      if (this.consecutiveFailures >= MAX_CONSECUTIVE_FAILURES && !this.workersDisabled) {
        this.workersDisabled = true;
        this.log.error(
          { event: "tokenize.workers_disabled", model: this.base.model, failures: this.consecutiveFailures },
          "tokenizer workers keep failing; encoding inline from now on",
        );
        const queued = this.queue.splice(0);
        for (const q of queued)
          q.resolve(this.encodeInline(q.req.texts ?? [], q.req.addSpecialTokens === true));
      }
      this.pump();
    };
    worker.on("message", (m: WorkerResponse) => {
      const job = slot.job;
      if (job === null || job.req.id !== m.id) return;
      if ("error" in m && job.req.warm) {
        // could not even load the tokenizer: a failed worker
        fail(new Error(`loading the tokenizer failed: ${m.error.message}`));
        return;
      }
      slot.job = null;
      worker.unref();
      if ("error" in m) {
        job.reject(new TokenizerError(m.error.code as TokenizerErrorCode, m.error.message));
      } else {
        this.consecutiveFailures = 0;
        job.resolve(m.ids);
      }
      this.pump();
    });
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`worker exited with code ${code}`)));
    this.slots.push(slot);
    return slot;
  }

  private pump(): void {
    if (this.closed) return;
    while (this.queue.length > 0) {
      const slot = this.slots.find((s) => s.ready && s.job === null);
      if (slot === undefined) {
        // nobody can take it now: make sure replacements are coming (they pump when ready)
        this.ensureWorkers();
        if (this.workersDisabled) {
          for (const q of this.queue.splice(0)) {
            q.resolve(this.encodeInline(q.req.texts ?? [], q.req.addSpecialTokens === true));
          }
        }
        break;
      }
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      slot.worker.postMessage(job.req);
    }
    this.metrics?.queueDepth.set({ model: this.base.model }, this.queue.length);
  }
}
