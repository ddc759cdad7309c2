import type { KvEvent } from "../protocol/types.ts";
import { type Digest, extendDigests, firstExtraKey } from "./block-hash.ts";
import type { Block, CacheRequest, KvCache } from "./kv-cache.ts";

/**
 * A continuous-batching scheduler in the style of vLLM v1: running requests first (decode or
 * the next prefill chunk), then waiting requests in FIFO order while there are free sequence
 * slots, token budget and KV blocks. When a running request cannot get a block, the most
 * recently admitted running request is preempted (recompute: its blocks are freed and it goes
 * back to the front of the waiting queue), as vLLM does.
 *
 * Timing model, per step: `stepMs + prefillMsPerToken * uncached prompt tokens computed +
 * decodeMsPerSeq * decoding sequences + loadMsPerToken * tokens loaded from the CPU tier`,
 * divided by `speed`. Prefix-cache hits skip prefill, so TTFT reflects them.
 */
export interface TimingModel {
  stepMs: number;
  prefillMsPerToken: number;
  decodeMsPerSeq: number;
  loadMsPerToken: number;
  speed: number;
}

export interface SchedulerOptions {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxWaiting: number;
  timing: TimingModel;
  root: Digest;
}

export type FinishReason = "stop" | "length" | "abort";

export interface RequestHooks {
  /** a token was generated (index = position in the output) */
  onToken(id: number, index: number): void;
  onFinish(reason: FinishReason): void;
}

export class EngineRequest implements CacheRequest {
  tokens: number[];
  digests: Digest[] = [];
  blocks: Block[] = [];
  numCachedBlocks = 0;
  readonly loraId: number | null;
  readonly loraName: string | null;
  readonly id: string;
  readonly promptLen: number;
  /** the synthetic output to emit, token by token */
  readonly output: number[];
  readonly finishReason: "stop" | "length";
  readonly hooks: RequestHooks;
  readonly extraKey: string;
  /** vLLM's `cache_salt`: in the first block's hash and extra keys */
  readonly cacheSalt: string | null;
  readonly firstExtraKey: string;
  numComputed = 0;
  generated = 0;
  /** tokens found in the prefix cache (GPU + CPU tier) at first scheduling */
  cachedTokens: number | null = null;
  readonly arrival = performance.now();
  firstTokenAt: number | null = null;
  state: "waiting" | "running" | "done" = "waiting";
  preemptions = 0;

  constructor(o: {
    id: string;
    prompt: number[];
    output: number[];
    finishReason: "stop" | "length";
    loraId: number | null;
    loraName: string | null;
    cacheSalt?: string | null;
    hooks: RequestHooks;
  }) {
    this.id = o.id;
    this.tokens = o.prompt.slice();
    this.promptLen = o.prompt.length;
    this.output = o.output;
    this.finishReason = o.finishReason;
    this.loraId = o.loraId;
    this.loraName = o.loraName;
    this.extraKey = o.loraName ?? "";
    this.cacheSalt = o.cacheSalt ?? null;
    this.firstExtraKey = firstExtraKey(o.loraName, this.cacheSalt);
    this.hooks = o.hooks;
  }
}

export interface StepObserver {
  /** events of one step (possibly empty) */
  onEvents(events: KvEvent[]): void;
  onSchedule?(info: { promptTokens: number; cachedTokensGpu: number; queriedTokens: number }): void;
  onFirstToken?(seconds: number): void;
  /** tokens of a request's first scheduling found on the CPU tier */
  onCpuHit?(tokens: number): void;
  onPreempt?(): void;
  onGenerated?(n: number): void;
  onPromptTokens?(n: number): void;
}

interface Scheduled {
  req: EngineRequest;
  numNew: number;
  prefill: boolean;
}

export class SchedulerFullError extends Error {}

export class Scheduler {
  readonly cache: KvCache;
  private readonly o: SchedulerOptions;
  private readonly obs: StepObserver;
  private readonly waiting: EngineRequest[] = [];
  private readonly running: EngineRequest[] = [];
  private timer: NodeJS.Timeout | NodeJS.Immediate | null = null;
  private busy = false;
  private closed = false;
  private nextAt = 0;
  steps = 0;
  preemptions = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(cache: KvCache, o: SchedulerOptions, obs: StepObserver) {
    this.cache = cache;
    this.o = o;
    this.obs = obs;
  }

  get numRunning(): number {
    return this.running.length;
  }
  get numWaiting(): number {
    return this.waiting.length;
  }
  /** running + waiting (used for least-loaded DP routing) */
  get load(): number {
    return this.running.length + this.waiting.length;
  }

  /** Hashes the request's full blocks not hashed yet: its prompt's at submit, then each one it fills. */
  private hashNewBlocks(req: EngineRequest): void {
    extendDigests(
      req.digests,
      this.o.root,
      req.tokens,
      this.cache.blockSize,
      req.extraKey,
      req.firstExtraKey,
    );
  }

  /** Blocks a request needs when alone in the cache (prompt + all output but the last token). */
  blocksNeeded(promptLen: number, outputLen: number): number {
    return this.cache.blocksFor(promptLen + Math.max(0, outputLen - 1));
  }

  submit(req: EngineRequest): void {
    if (this.closed) throw new SchedulerFullError("engine is shutting down");
    if (this.waiting.length >= this.o.maxWaiting) throw new SchedulerFullError("waiting queue is full");
    this.hashNewBlocks(req);
    this.waiting.push(req);
    this.kick();
  }

  /** Client went away: drop the request wherever it is. */
  abort(req: EngineRequest): void {
    if (req.state === "done") return;
    const wi = this.waiting.indexOf(req);
    if (wi >= 0) this.waiting.splice(wi, 1);
    const ri = this.running.indexOf(req);
    if (ri >= 0) {
      this.running.splice(ri, 1);
      this.cache.free(req);
    }
    req.state = "done";
    req.hooks.onFinish("abort");
    this.checkIdle();
  }

  /** vLLM's reset_prefix_cache: only when no request holds blocks. Events go out at once. */
  resetPrefixCache(): boolean {
    const ok = this.cache.reset();
    if (ok && !this.busy) this.obs.onEvents(this.cache.drainEvents());
    return ok;
  }

  /** Resolves when no request is running or waiting and no step is in flight. */
  idle(): Promise<void> {
    if (!this.busy && this.running.length === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) {
      clearTimeout(this.timer as NodeJS.Timeout);
      clearImmediate(this.timer as NodeJS.Immediate);
      this.timer = null;
    }
    for (const r of [...this.running, ...this.waiting]) this.abort(r);
    this.busy = false;
    this.checkIdle();
  }

  private kick(): void {
    if (this.busy || this.closed) return;
    this.busy = true;
    this.timer = setImmediate(() => this.step());
  }

  private checkIdle(): void {
    if (this.busy || this.running.length > 0 || this.waiting.length > 0) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of w) r();
  }

  private step(): void {
    this.timer = null;
    if (this.closed) return;
    const plan = this.schedule();
    const events = this.cache.drainEvents();
    if (plan.batch.length === 0) {
      if (events.length > 0) this.obs.onEvents(events);
      if (this.running.length > 0 || this.waiting.length > 0) {
        // e.g. every running request was preempted this pass: the freed blocks admit work next pass
        this.timer = setTimeout(() => this.step(), 1);
        return;
      }
      this.busy = false;
      this.checkIdle();
      return;
    }
    this.steps++;
    const t = this.o.timing;
    const ms =
      (t.stepMs +
        t.prefillMsPerToken * plan.prefillTokens +
        t.decodeMsPerSeq * plan.decodeSeqs +
        t.loadMsPerToken * plan.loadedTokens) /
      t.speed;
    const now = performance.now();
    this.nextAt = Math.max(this.nextAt, now) + ms;
    const delay = this.nextAt - now;
    const finish = () => {
      this.timer = null;
      if (this.closed) return;
      this.complete(plan.batch);
      this.obs.onEvents(events);
      // run the next step (or go idle)
      this.step();
    };
    this.timer = delay < 1 ? setImmediate(finish) : setTimeout(finish, delay);
  }

  private schedule(): {
    batch: Scheduled[];
    prefillTokens: number;
    decodeSeqs: number;
    loadedTokens: number;
  } {
    const batch: Scheduled[] = [];
    let budget = this.o.maxNumBatchedTokens;
    let prefillTokens = 0;
    let decodeSeqs = 0;
    let loadedTokens = 0;
    let preempted = false;
    const bs = this.cache.blockSize;
    // running requests first
    for (let i = 0; i < this.running.length && budget > 0; ) {
      const req = this.running[i];
      const numNew = Math.min(req.tokens.length - req.numComputed, budget);
      if (numNew <= 0) {
        i++;
        continue;
      }
      let ok = this.cache.allocate(req, req.numComputed + numNew, null, req.numComputed + numNew);
      while (!ok) {
        // preempt the lowest-priority (last admitted) running request
        const victim = this.running[this.running.length - 1];
        this.preempt(victim);
        preempted = true;
        const bi = batch.findIndex((s) => s.req === victim);
        if (bi >= 0) {
          const [s] = batch.splice(bi, 1);
          budget += s.numNew;
          if (s.prefill) prefillTokens -= s.numNew;
          else decodeSeqs--;
        }
        if (victim === req) break;
        ok = this.cache.allocate(req, req.numComputed + numNew, null, req.numComputed + numNew);
      }
      if (!ok) break;
      const prefill = req.numComputed < req.promptLen;
      batch.push({ req, numNew, prefill });
      budget -= numNew;
      if (prefill) prefillTokens += numNew;
      else decodeSeqs++;
      i++;
    }
    // then waiting requests, FIFO
    while (!preempted && this.waiting.length > 0 && budget > 0 && this.running.length < this.o.maxNumSeqs) {
      const req = this.waiting[0];
      const maxHitBlocks = Math.floor((req.tokens.length - 1) / bs);
      const hit = this.cache.lookup(req, maxHitBlocks);
      const gpuTokens = hit.gpuBlocks.length * bs;
      const cpuTokens = hit.cpuBlocks * bs;
      const hitTokens = gpuTokens + cpuTokens;
      const numNew = Math.min(req.tokens.length - hitTokens, budget);
      if (!this.cache.allocate(req, hitTokens + numNew, hit, hitTokens + numNew)) break;
      this.waiting.shift();
      this.running.push(req);
      req.state = "running";
      req.numComputed = hitTokens;
      if (req.cachedTokens === null) {
        req.cachedTokens = hitTokens;
        this.obs.onSchedule?.({
          promptTokens: req.promptLen,
          cachedTokensGpu: gpuTokens,
          queriedTokens: req.tokens.length,
        });
        if (cpuTokens > 0) this.obs.onCpuHit?.(cpuTokens);
      }
      const prefill = req.numComputed < req.promptLen;
      batch.push({ req, numNew, prefill });
      budget -= numNew;
      loadedTokens += cpuTokens;
      if (prefill) prefillTokens += numNew;
      else decodeSeqs++;
    }
    return { batch, prefillTokens, decodeSeqs, loadedTokens };
  }

  private preempt(req: EngineRequest): void {
    const i = this.running.indexOf(req);
    if (i >= 0) this.running.splice(i, 1);
    this.cache.free(req);
    req.numComputed = 0;
    req.state = "waiting";
    req.preemptions++;
    this.preemptions++;
    this.obs.onPreempt?.();
    this.waiting.unshift(req);
  }

  private complete(batch: Scheduled[]): void {
    const now = performance.now();
    let generated = 0;
    for (const { req, numNew } of batch) {
      if (req.state !== "running") continue; // aborted or preempted meanwhile
      req.numComputed += numNew;
      if (req.numComputed < req.tokens.length) continue; // more prefill chunks to go
      if (req.output.length === 0) {
        // a pooling request (embeddings, score): prefill only, finished with its last chunk
        this.obs.onPromptTokens?.(req.promptLen);
        this.finish(req);
        continue;
      }
      const id = req.output[req.generated];
      const index = req.generated;
      req.generated++;
      generated++;
      if (index === 0 && req.firstTokenAt === null) {
        req.firstTokenAt = now;
        this.obs.onFirstToken?.((now - req.arrival) / 1000);
        this.obs.onPromptTokens?.(req.promptLen);
      }
      const done = req.generated >= req.output.length;
      if (!done) {
        req.tokens.push(id);
        this.hashNewBlocks(req);
      }
      req.hooks.onToken(id, index);
      if (done) this.finish(req);
    }
    if (generated > 0) this.obs.onGenerated?.(generated);
  }

  private finish(req: EngineRequest): void {
    const ri = this.running.indexOf(req);
    if (ri >= 0) this.running.splice(ri, 1);
    this.cache.free(req);
    req.state = "done";
    req.hooks.onFinish(req.finishReason);
  }
}
