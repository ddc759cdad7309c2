/**
 * A modelled engine for the evaluator: the mock engine's scheduler (src/engine/scheduler.ts) in
 * simulated time, over workload blocks instead of token ids.
 *
 * - Continuous batching, vLLM v1 order: running requests first (their next prefill chunk or one
 *   decode token), then waiting requests FIFO while there are free sequence slots
 *   (`maxRunning`), token budget (`tokenBudget`) and KV blocks.
 * - Step time = stepMs + prefillMsPerToken * prefill tokens + decodeMsPerSeq * decoding sequences.
 *   The step that computes a prompt's last token emits its first token (TTFT ends there).
 * - KV cache of `cacheBlocks` blocks, vLLM's layout: full prompt blocks are cached under their
 *   workload id once computed. Every block nobody uses, cached or not, sits in one LRU free queue
 *   (vLLM's and the mock engine's): a finished request's blocks go to its tail in reverse order
 *   (output and partial blocks, then its prompt blocks last to first), allocation takes the head,
 *   and taking a cached block evicts it (BlockRemoved) even while blocks that hold nothing wait
 *   behind it. A request holds all its blocks (prompt and output) from admission to finish; a
 *   request that could never fit is rejected.
 * - A chunk's full blocks are cached when the chunk is scheduled (a request admitted later in the
 *   same step reuses them), as in the engine. Events: BlockStored for them, BlockRemoved on
 *   eviction, handed to `emit` at the end of the step that produced them (the simulator delays
 *   them by the event lag).
 *
 * Simplifications (stated in docs/routing-quality.md): blocks are allocated whole at admission
 * (so there is no preemption), output tokens are never cached (a trace does not name them).
 */

export interface TimingModel {
  stepMs: number;
  prefillMsPerToken: number;
  decodeMsPerSeq: number;
}

export interface EngineModelOptions {
  cacheBlocks: number;
  blockTokens: number;
  maxRunning: number;
  tokenBudget: number;
  timing: TimingModel;
}

/** The mock engine's defaults (src/engine/options.ts) for timing, sequences and budget. */
export const ENGINE_MODEL_DEFAULTS: Omit<EngineModelOptions, "cacheBlocks" | "blockTokens"> = {
  maxRunning: 256,
  tokenBudget: 2048,
  timing: { stepMs: 4, prefillMsPerToken: 0.1, decodeMsPerSeq: 0.2 },
};

export interface SimRequest {
  id: number;
  arrival: number;
  inputLength: number;
  outputLength: number;
  hashIds: number[];
  /** full prompt blocks (cacheable) */
  fullBlocks: number;
  /** blocks an engine may reuse: the last prompt token is always computed */
  reusableBlocks: number;
  /** filled by the engine */
  hitBlocks: number;
  firstTokenAt: number;
  finishedAt: number;
  rejected: boolean;
}

export interface EngineEvents {
  stored: Array<{ ids: number[]; parent: number | null }>;
  removed: number[];
}

interface Running {
  req: SimRequest;
  /** prompt tokens computed (cached tokens count as computed) */
  computed: number;
  generated: number;
  /** blocks this request holds that are not cached blocks (partial last, output, not yet computed) */
  anon: number;
  /** cached prompt blocks pinned by this request (leading) */
  pinned: number;
}

export interface EngineHooks {
  onFirstToken(req: SimRequest, t: number): void;
  onFinish(req: SimRequest, t: number): void;
  onEvents(ev: EngineEvents, t: number): void;
}

interface CachedBlock {
  /** workload block id; EMPTY for a free block that holds nothing */
  id: number;
  /** running requests holding it; 0 = in the free queue */
  users: number;
  prev: CachedBlock;
  next: CachedBlock;
}

const EMPTY = -1;

/** The free queue's sentinel: head.next is the least recently used block, head.prev the most. */
function freeQueueHead(): CachedBlock {
  const h = { id: -2, users: 0 } as CachedBlock;
  h.prev = h;
  h.next = h;
  return h;
}

export class EngineModel {
  /** cached block id → its entry (users, place in the free queue) */
  private readonly refs = new Map<number, CachedBlock>();
  /**
   * Blocks nobody uses, least recently used first (vLLM's free block queue): cached blocks and
   * EMPTY ones (never computed, or a request's partial and output blocks), a list threaded
   * through the entries, so taking the head and unlinking a reused block are O(1).
   */
  private readonly free: CachedBlock = freeQueueHead();
  private freeSize = 0;
  /** EMPTY entries out of the queue, reused (at most cacheBlocks exist) */
  private readonly spare: CachedBlock[] = [];
  readonly waiting: SimRequest[] = [];
  private waitHead = 0;
  readonly running: Running[] = [];
  private stored: EngineEvents["stored"] = [];
  private removed: number[] = [];
  /** end time of the step in flight (or of a run of identical decode steps); -1 when idle */
  busyUntil = -1;
  /** a run of identical decode-only steps: start, per-step time, steps */
  private run: { t0: number; d: number; k: number } | null = null;
  /** bumped when the pending step-end is replaced, so the stale one is ignored */
  epoch = 0;
  steps = 0;
  evictions = 0;
  /** simulated ms spent in steps (for utilization) */
  busyMs = 0;
  private stepStart = 0;
  served = 0;

  constructor(
    readonly name: string,
    readonly o: EngineModelOptions,
    private readonly hooks: EngineHooks,
  ) {
    // a fresh engine: every block free and empty
    for (let i = 0; i < o.cacheBlocks; i++) this.pushEmpty();
  }

  /** Leading blocks of `ids` cached here now (the oracle's and the tests' view). */
  cachedPrefix(ids: readonly number[], cap = ids.length): number {
    let n = 0;
    while (n < cap && this.refs.has(ids[n])) n++;
    return n;
  }

  get cachedBlocks(): number {
    return this.refs.size;
  }

  /** Prompt tokens still to compute on this engine (waiting + running prefills), for the oracle. */
  pendingPrefillTokens(): number {
    let n = 0;
    for (let i = this.waitHead; i < this.waiting.length; i++) {
      const r = this.waiting[i];
      n += r.inputLength - this.cachedPrefix(r.hashIds, r.reusableBlocks) * this.o.blockTokens;
    }
    for (const r of this.running) n += Math.max(0, r.req.inputLength - r.computed);
    return n;
  }

  /** Time until the step in progress ends (a run of decode steps stops after its current step). */
  restOfStep(now: number): number {
    if (this.busyUntil < 0) return 0;
    if (this.run === null) return Math.max(0, this.busyUntil - now);
    const { t0, d, k } = this.run;
    const done = Math.min(k - 1, Math.floor((now - t0) / d));
    return Math.max(0, t0 + (done + 1) * d - now);
  }

  get numWaiting(): number {
    return this.waiting.length - this.waitHead;
  }

  /** A request arrives at `now`; returns the time of the next step end to schedule, or null. */
  submit(req: SimRequest, now: number): number | null {
    this.served++;
    const need = this.footprint(req);
    if (need > this.o.cacheBlocks) {
      req.rejected = true;
      req.firstTokenAt = now;
      req.finishedAt = now;
      this.hooks.onFinish(req, now);
      return null;
    }
    this.waiting.push(req);
    if (this.busyUntil < 0) return this.step(now);
    if (this.run !== null) {
      // a run of decode steps is in flight: stop it after the step in progress
      const { t0, d, k } = this.run;
      const done = Math.min(k - 1, Math.floor((now - t0) / d));
      this.run = { t0, d, k: done + 1 };
      this.busyUntil = t0 + (done + 1) * d;
      this.epoch++;
      return this.busyUntil;
    }
    return null;
  }

  private footprint(r: SimRequest): number {
    return Math.ceil((r.inputLength + Math.max(0, r.outputLength - 1)) / this.o.blockTokens);
  }

  /** The step in flight ended at `now`: apply it, emit its events, start the next. */
  stepEnd(now: number): number | null {
    this.busyMs += now - this.stepStart;
    if (this.run !== null) {
      const k = this.run.k;
      this.run = null;
      this.applyDecode(k, now);
    } else this.applyStep(now);
    this.flush(now);
    return this.step(now);
  }

  private plan: Array<{ r: Running; prefill: number }> = [];

  /** Plan the next step at `now`; returns its end time, or null when idle. */
  private step(now: number): number | null {
    const bs = this.o.blockTokens;
    let budget = this.o.tokenBudget;
    let prefillTokens = 0;
    let decodeSeqs = 0;
    const plan: Array<{ r: Running; prefill: number }> = [];
    for (const r of this.running) {
      if (budget <= 0) break;
      if (r.computed < r.req.inputLength) {
        const n = Math.min(r.req.inputLength - r.computed, budget);
        plan.push({ r, prefill: n });
        this.register(r, r.computed + n);
        budget -= n;
        prefillTokens += n;
      } else {
        plan.push({ r, prefill: 0 });
        budget--;
        decodeSeqs++;
      }
    }
    while (this.numWaiting > 0 && budget > 0 && this.running.length < this.o.maxRunning) {
      const req = this.waiting[this.waitHead];
      const hit = this.cachedPrefix(req.hashIds, req.reusableBlocks);
      const need = this.footprint(req) - hit;
      // the hit's blocks leave the free queue before new blocks are taken from it (the engine's
      // fits/allocate), so a request never evicts its own hit
      let idleHits = 0;
      for (let i = 0; i < hit; i++)
        if ((this.refs.get(req.hashIds[i]) as CachedBlock).users === 0) idleHits++;
      if (need > this.freeSize - idleHits) break;
      this.waitHead++;
      if (this.waitHead > 1024 && this.waitHead * 2 > this.waiting.length) {
        this.waiting.splice(0, this.waitHead);
        this.waitHead = 0;
      }
      for (let i = 0; i < hit; i++) this.pin(req.hashIds[i]);
      this.take(need);
      req.hitBlocks = hit;
      const r: Running = { req, computed: hit * bs, generated: 0, anon: need, pinned: hit };
      this.running.push(r);
      const n = Math.min(req.inputLength - r.computed, budget);
      plan.push({ r, prefill: n });
      this.register(r, r.computed + n);
      budget -= n;
      prefillTokens += n;
    }
    if (plan.length === 0) {
      this.busyUntil = -1;
      return null;
    }
    this.steps++;
    this.stepStart = now;
    const t = this.o.timing;
    const d = t.stepMs + t.prefillMsPerToken * prefillTokens + t.decodeMsPerSeq * decodeSeqs;
    this.epoch++;
    if (prefillTokens === 0 && this.numWaiting === 0 && plan.length === this.running.length) {
      // identical decode-only steps until the first request finishes (an arrival cuts it short)
      let k = Number.POSITIVE_INFINITY;
      for (const { r } of plan) k = Math.min(k, r.req.outputLength - r.generated);
      k = Math.max(1, k);
      this.run = { t0: now, d, k };
      this.busyUntil = now + k * d;
      return this.busyUntil;
    }
    this.plan = plan;
    this.busyUntil = now + d;
    return this.busyUntil;
  }

  /** Take `need` blocks from the free queue's head (the caller checked they exist), evicting cached ones. */
  private take(need: number): void {
    for (let k = 0; k < need; k++) {
      const b = this.free.next;
      this.unlink(b);
      if (b.id !== EMPTY) {
        this.refs.delete(b.id);
        this.removed.push(b.id);
        this.evictions++;
        b.id = EMPTY;
      }
      b.users = 0;
      this.spare.push(b);
    }
  }

  /** An empty block goes to the free queue's tail. */
  private pushEmpty(): void {
    const b =
      this.spare.pop() ??
      ({
        id: EMPTY,
        users: 0,
        prev: null as unknown as CachedBlock,
        next: null as unknown as CachedBlock,
      } as CachedBlock);
    b.id = EMPTY;
    b.users = 0;
    this.append(b);
  }

  private append(b: CachedBlock): void {
    const tail = this.free.prev;
    b.prev = tail;
    b.next = this.free;
    tail.next = b;
    this.free.prev = b;
    this.freeSize++;
  }

  /** A request uses cached block `id`; a block it computed becomes cached (one of its anonymous blocks). */
  private pin(id: number): void {
    let b = this.refs.get(id);
    if (b === undefined) {
      b = this.spare.pop() ?? ({ prev: null, next: null } as unknown as CachedBlock);
      b.id = id;
      b.users = 0;
      this.refs.set(id, b);
    } else if (b.users === 0) this.unlink(b);
    b.users++;
  }

  private unpin(id: number): void {
    const b = this.refs.get(id);
    if (b === undefined || --b.users > 0) return;
    // most recently used: appended at the tail
    this.append(b);
  }

  private unlink(b: CachedBlock): void {
    b.prev.next = b.next;
    b.next.prev = b.prev;
    this.freeSize--;
  }

  /**
   * The blocks a request's scheduled chunk fills (computed + chunk tokens) become cached when the
   * chunk is scheduled, as in the engine (vLLM's allocate_slots): a request admitted later in the
   * same pass already reuses them (the step computes both). A block another request cached
   * meanwhile is shared; each run of new blocks is one BlockStored chained on its parent, sent
   * with the step's other events when the step ends.
   */
  private register(r: Running, computedAfter: number): void {
    const to = Math.min(r.req.fullBlocks, Math.floor(computedAfter / this.o.blockTokens));
    let start = -1;
    for (let b = r.pinned; b < to; b++) {
      const id = r.req.hashIds[b];
      if (this.refs.has(id)) {
        // another request cached it meanwhile: this request uses that copy, and its own copy
        // stays its block until it finishes (a second physical copy, as in the engine), then
        // goes back empty
        if (start >= 0) this.storeRun(r.req.hashIds, start, b);
        start = -1;
      } else {
        r.anon--;
        if (start < 0) start = b;
      }
      this.pin(id);
    }
    if (start >= 0) this.storeRun(r.req.hashIds, start, to);
    r.pinned = Math.max(r.pinned, to);
  }

  private applyStep(now: number): void {
    const plan = this.plan;
    this.plan = [];
    for (const { r, prefill } of plan) {
      if (prefill > 0) {
        r.computed += prefill;
        if (r.computed >= r.req.inputLength) this.token(r, now);
      } else this.token(r, now);
    }
    this.retire(now);
  }

  private storeRun(ids: readonly number[], from: number, to: number): void {
    this.stored.push({ ids: ids.slice(from, to), parent: from > 0 ? ids[from - 1] : null });
  }

  private applyDecode(k: number, now: number): void {
    for (const r of this.running) r.generated += k;
    this.retire(now);
  }

  private token(r: Running, now: number): void {
    r.generated++;
    if (r.generated === 1) {
      r.req.firstTokenAt = now;
      this.hooks.onFirstToken(r.req, now);
    }
  }

  private retire(now: number): void {
    let w = 0;
    for (let i = 0; i < this.running.length; i++) {
      const r = this.running[i];
      if (r.generated >= Math.max(1, r.req.outputLength)) {
        // freed in reverse order, so a request's last blocks are evicted before its first: its
        // blocks that hold nothing reusable (output, partial last, second copies) first
        for (let k = 0; k < r.anon; k++) this.pushEmpty();
        for (let b = r.pinned - 1; b >= 0; b--) this.unpin(r.req.hashIds[b]);
        r.req.finishedAt = now;
        this.hooks.onFinish(r.req, now);
      } else this.running[w++] = r;
    }
    this.running.length = w;
  }

  private flush(now: number): void {
    if (this.stored.length === 0 && this.removed.length === 0) return;
    const ev: EngineEvents = { stored: this.stored, removed: this.removed };
    this.stored = [];
    this.removed = [];
    this.hooks.onEvents(ev, now);
  }
}
