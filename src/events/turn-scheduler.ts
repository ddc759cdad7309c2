/**
 * The process-wide budget of event work per event-loop turn, shared by every stream (issue 17).
 *
 * A stream's own slice bounds only that stream: with one slice per stream per turn plus an
 * unbounded receive chain, a flooding stream still filled every turn, and an HTTP request or a
 * quiet stream's batch waited behind it (a turn of 30-40 ms under a flood). Here one scheduler
 * runs all apply work from one `setImmediate` per turn:
 *
 * - apply: the streams with queued work run in round-robin order (the start rotates every turn),
 *   each with a share of what is left of the turn's budget (`left / streams still to run`), so a
 *   flooder gets at most its share while others have work, and a quiet stream's few batches apply
 *   within one turn. A stream alone gets the whole budget.
 * - receive: frames read from the sockets count against a receive budget per turn (the native
 *   receive and queueing, timed between frames of one read chain). Once it is spent, a read chain
 *   waits for the next turn (`nextTurn`): a flooder's socket is then read at the scheduler's pace,
 *   its surplus stays in libzmq's queue (bounded by the high-water mark) and then in the engine's,
 *   which drops it (a gap the replay fills). Every chain still gets one frame per turn.
 *
 * - share: all event work together (apply and receive) uses at most `share` of the wall time,
 *   a token bucket of work-milliseconds refilled at `share` ms per ms (holding `BURST_MS` at most).
 *   An empty bucket delays the next turn by a timer until it refills. Without it a flood keeps
 *   the thread 100 % busy: every request then waits behind a turn of event work, the OS runs the
 *   thread as a CPU hog (a late wake-up on a busy machine), and the garbage of applying
 *   everything the flooder sends brings long collections. The surplus stays with the engine
 *   (dropped at its high-water mark, replayed later) instead.
 *
 * The budgets are the largest `applyMs`/`receiveMs` and the smallest `share` among the streams
 * that asked this turn (one process runs one configuration; tests may mix).
 */

/** work-milliseconds the bucket holds at most: a quiet process's burst runs without a pause */
const BURST_MS = 20;

export interface TurnWorker {
  /** Apply queued work for up to `budgetMs`; true: work is left. */
  runTurn(budgetMs: number): boolean;
  /** this stream's apply budget per turn (ms) */
  readonly applyMs: number;
  /** most of the wall time all event work may take (0..1] */
  readonly share: number;
}

export class TurnScheduler {
  private ready: TurnWorker[] = [];
  private readonly queued = new Set<TurnWorker>();
  private scheduled = false;
  private rotate = 0;
  private receiveSpent = 0;
  private receiveBudget = 0;
  private turnWaiters: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private tokens = BURST_MS;
  private refilledAt = performance.now();
  private share = 1;
  /** turns run, and turns that ended with work left (metrics/bench) */
  turns = 0;
  turnsCut = 0;
  /** longest apply phase of a turn so far (ms) */
  longestTurnMs = 0;
  /** turns delayed because event work used its share of the time, and the total delay (ms) */
  delays = 0;
  delayedMs = 0;

  /** `w` has queued work: it runs in the next turn (once, however often it asks). */
  enqueue(w: TurnWorker): void {
    if (this.queued.has(w)) return;
    this.queued.add(w);
    this.ready.push(w);
    this.schedule();
  }

  /** Forget `w` (its stream closed). */
  remove(w: TurnWorker): void {
    if (!this.queued.delete(w)) return;
    const i = this.ready.indexOf(w);
    if (i >= 0) this.ready.splice(i, 1);
  }

  /**
   * A read chain received a frame that cost `ms`; false: this turn's receive budget is spent
   * (the caller waits for `nextTurn()` before reading more).
   */
  chargeReceive(ms: number, budgetMs: number, share: number): boolean {
    if (budgetMs > this.receiveBudget) this.receiveBudget = budgetMs;
    if (share < this.share) this.share = share;
    this.receiveSpent += ms;
    this.tokens -= ms;
    return this.receiveSpent < this.receiveBudget && this.tokens > 0;
  }

  /** Settles at the start of the next turn (after its apply work). */
  nextTurn(): Promise<void> {
    if (this.turnWaiters === null)
      this.turnWaiters = new Promise((resolve) => {
        this.wake = resolve;
      });
    this.schedule();
    return this.turnWaiters;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.refill();
    if (this.tokens > 0) {
      setImmediate(this.turn);
      return;
    }
    const wait = Math.max(1, Math.ceil(-this.tokens / this.share));
    this.delays++;
    this.delayedMs += wait;
    setTimeout(this.turn, wait);
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(BURST_MS, this.tokens + (now - this.refilledAt) * this.share);
    this.refilledAt = now;
  }

  private readonly turn = (): void => {
    this.scheduled = false;
    this.turns++;
    this.refill();
    const n = this.ready.length;
    if (n > 0) {
      let budget = 0;
      let share = 1;
      for (let i = 0; i < n; i++) {
        const w = this.ready[i];
        if (w.applyMs > budget) budget = w.applyMs;
        if (w.share < share) share = w.share;
      }
      this.share = share;
      const order = this.ready;
      this.ready = [];
      const first = this.rotate++ % n;
      const start = performance.now();
      for (let k = 0; k < n; k++) {
        const w = order[(first + k) % n];
        if (!this.queued.has(w)) continue; // removed meanwhile
        const left = budget - (performance.now() - start);
        let more: boolean;
        try {
          // each still to run gets an equal part of what is left; one report at least (runTurn)
          more = w.runTurn(left > 0 ? left / (n - k) : 0);
        } catch (err) {
          // the thrower and the streams after it stay queued for the next turn
          for (let j = k; j < n; j++) this.ready.push(order[(first + j) % n]);
          this.schedule();
          throw err;
        }
        if (more) this.ready.push(w);
        else this.queued.delete(w);
      }
      const took = performance.now() - start;
      this.tokens -= took;
      if (took > this.longestTurnMs) this.longestTurnMs = took;
      if (this.ready.length > 0) this.turnsCut++;
    }
    this.receiveSpent = 0;
    this.receiveBudget = 0;
    const wake = this.wake;
    if (wake !== null) {
      this.turnWaiters = null;
      this.wake = null;
      wake();
    }
    if (this.ready.length > 0) this.schedule();
  };
}

/** The scheduler all streams of this process share. */
export const turnScheduler = new TurnScheduler();
