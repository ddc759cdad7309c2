/**
 * Flood isolation for one stream: everything its event source reports (live frames, replay
 * answers, up/down) goes through this ordered inbox instead of straight into the subscriber, so
 *
 * - received bytes are bounded: once the stream holds `bufferBytes` received but not yet applied,
 *   the source's receive loop waits (the promise `frames()` returns) until the inbox drained to
 *   half of it. Meanwhile libzmq's queue fills up to its high-water mark and the engine's PUB
 *   drops what does not fit: the sequence tracker sees a gap and the replay fills it later.
 *   Replay answers are never refused (a ROUTER drops what its peer does not read, which would
 *   turn a gap into a resync); they count toward the bytes, so the live side waits instead.
 * - applying is time-sliced: the process-wide `TurnScheduler` runs one slice per event-loop turn
 *   (at most `sliceEvents`, and the stream's share of the turn's `sliceMs` shared by all
 *   streams with work), so HTTP requests, timers and the other streams run in between. One batch
 *   is never split: a slice ends after the batch that crosses its budget.
 * - receiving is budgeted too: the time between frames of one read chain counts against the
 *   turn's receive budget (half of `sliceMs`, shared), and after `burstMessages` frames in a turn
 *   the chain waits for the next turn (a flood would otherwise be read in one long chain of
 *   promise continuations, which holds the event loop just like applying it would). Frames are
 *   queued undecoded: decoding is part of the apply slice.
 *
 * Reports are kept in parallel arrays (kind, number, value) so a queued message costs no object.
 */
import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";
import type { DownCause, EventSourceHandlers } from "./event-source.ts";
import { type TurnScheduler, type TurnWorker, turnScheduler } from "./turn-scheduler.ts";
import type { StreamFlow, ThrottleReason } from "./types.ts";

export interface InboxOptions {
  /** bytes received but not yet applied above which the live receive waits */
  bufferBytes: number;
  /** apply time per event-loop turn, shared by all streams with work (ms) */
  sliceMs: number;
  /** most of the wall time the event work of all streams may take (0..1], see TurnScheduler */
  share: number;
  /** events applied per stream per event-loop turn */
  sliceEvents: number;
  /** frames received in one event-loop turn before the receive loop waits for the next */
  burstMessages: number;
  /**
   * Longest a receive may wait for room (ms); then frames over the budget are shed here instead
   * (a gap the replay fills). libzmq stops reading a connection whose SUB queue is full, so it
   * cannot see heartbeats: a long wait drops the connection, and a reconnect while the queue is
   * full aborts the process (libzmq issues #3937, #4767: a stale "restart input" reaches the new
   * connection). Keep it well under the heartbeat timeout.
   */
  maxPauseMs: number;
  /**
   * Frames shed after a wait ran out before waiting again: enough to bring libzmq's queue (its
   * high-water mark) under the half where it reads the connection again, so heartbeats get
   * through, without spending the event loop on reading a whole flood only to drop it.
   */
  shedBurst: number;
}

export interface InboxHooks {
  /** events the stream has applied so far (the slice's event budget reads it before and after) */
  eventsApplied(): number;
  throttled?(reason: ThrottleReason): void;
}

/** What a queued report is (numbers, so the kinds array stays a packed small-integer array). */
const Kind = {
  Frames: 0,
  Up: 1,
  Down: 2,
  Replaced: 3,
  ReplayMessage: 4,
  ReplayEnd: 5,
  ReplayFailed: 6,
  ReplayBadFrame: 7,
  ReplayThrottled: 8,
  ReplaySettled: 9,
} as const;
type Kind = (typeof Kind)[keyof typeof Kind];

const THROTTLE_LOG_EVERY_MS = 10_000;

export class StreamInbox implements TurnWorker {
  private kinds: Kind[] = [];
  private nums: number[] = [];
  private vals: unknown[] = [];
  private sizes: number[] = [];
  private head = 0;
  private scheduled = false;
  private closed = false;
  private pause: Promise<void> | null = null;
  private resume: (() => void) | null = null;
  private pausedAt = 0;
  private pauseTimer: NodeJS.Timeout | null = null;
  /** a wait ran out: this many live frames over the budget are dropped here before the next wait */
  private shedQuota = 0;
  /** live frames dropped while shedding */
  shed = 0;
  private burst = 0;
  /** when the last frame of the current read chain was queued (0: the chain waited since) */
  private lastFrameAt = 0;
  private readonly logBucket = new LogBucket(THROTTLE_LOG_EVERY_MS, 1);
  private pausesSinceLog = 0;
  private slicesSinceLog = 0;
  /** bytes received and not yet applied, and the most there ever were */
  bufferedBytes = 0;
  peakBufferedBytes = 0;
  /** the most bytes a queued live frame ever brought the inbox to: under the budget + one frame */
  peakLiveBytes = 0;
  /** times the receive loop waited for the inbox to drain, and slices that ended with work left */
  pauses = 0;
  slicesCut = 0;
  /** total time the receive loop spent waiting (ms) */
  pausedMs = 0;

  constructor(
    private readonly to: EventSourceHandlers,
    private readonly opts: InboxOptions,
    private readonly hooks: InboxHooks,
    private readonly log: Logger,
    private readonly ctx: () => Record<string, unknown>,
    private readonly scheduler: TurnScheduler = turnScheduler,
  ) {}

  get applyMs(): number {
    return this.opts.sliceMs;
  }

  get share(): number {
    return this.opts.share;
  }

  /** The handlers to give the source: they queue, the slices deliver to `to` in the same order. */
  handlers(): EventSourceHandlers {
    return {
      up: () => this.push(Kind.Up, 0, null, 0),
      down: (cause, silentMs) => this.push(Kind.Down, silentMs, cause, 0),
      frames: (frames) => this.frames(frames),
      replaced: (cause, delayMs) => this.push(Kind.Replaced, delayMs, cause, 0),
      replay: {
        message: (seq, payload) => this.push(Kind.ReplayMessage, seq, payload, payload.length),
        end: () => this.push(Kind.ReplayEnd, 0, null, 0),
        failed: (fromSeq, err, received) => this.push(Kind.ReplayFailed, fromSeq, [err, received], 0),
        badFrame: (err) => this.push(Kind.ReplayBadFrame, 0, err, 0),
        throttled: (delayMs) => this.push(Kind.ReplayThrottled, delayMs, null, 0),
        settled: () => this.push(Kind.ReplaySettled, 0, null, 0),
      },
    };
  }

  flow(): StreamFlow {
    return {
      bufferedBytes: this.bufferedBytes,
      peakBufferedBytes: this.peakBufferedBytes,
      peakLiveBytes: this.peakLiveBytes,
      queued: this.kinds.length - this.head,
      pauses: this.pauses,
      pausedMs: this.pausedMs + (this.pause === null ? 0 : performance.now() - this.pausedAt),
      slicesCut: this.slicesCut,
      shed: this.shed,
    };
  }

  /** Forget what is queued and release a waiting receive loop (it sees its socket closed). */
  close(): void {
    this.closed = true;
    this.kinds = [];
    this.nums = [];
    this.vals = [];
    this.sizes = [];
    this.head = 0;
    this.bufferedBytes = 0;
    this.scheduler.remove(this);
    this.release();
  }

  private frames(frames: Buffer[]): Promise<void> | undefined {
    if (this.closed) return undefined;
    const t0 = performance.now();
    // a frame right after the previous one of this chain: the gap is the native receive
    const gap = this.lastFrameAt > 0 && t0 - this.lastFrameAt < 1 ? t0 - this.lastFrameAt : 0;
    this.lastFrameAt = 0;
    if (this.bufferedBytes >= this.opts.bufferBytes) {
      // over budget before this frame (a replay answer, or a wait that ran out): never queued
      this.shed++;
      this.hooks.throttled?.("shed");
      if (this.shedQuota > 0) this.shedQuota--;
      else return this.waitForRoom();
    } else {
      let size = 0;
      for (let i = 0; i < frames.length; i++) size += frames[i].length;
      this.push(Kind.Frames, 0, frames, size);
      if (this.bufferedBytes > this.peakLiveBytes) this.peakLiveBytes = this.bufferedBytes;
      if (this.bufferedBytes >= this.opts.bufferBytes) return this.waitForRoom();
    }
    const end = performance.now();
    if (
      !this.scheduler.chargeReceive(gap + end - t0, this.opts.sliceMs / 2, this.opts.share) ||
      ++this.burst >= this.opts.burstMessages
    ) {
      this.burst = 0;
      return this.scheduler.nextTurn();
    }
    this.lastFrameAt = end;
    return undefined;
  }

  private push(kind: Kind, num: number, val: unknown, size: number): void {
    if (this.closed) return;
    this.kinds.push(kind);
    this.nums.push(num);
    this.vals.push(val);
    this.sizes.push(size);
    this.bufferedBytes += size;
    if (this.bufferedBytes > this.peakBufferedBytes) this.peakBufferedBytes = this.bufferedBytes;
    if (!this.scheduled) {
      this.scheduled = true;
      this.scheduler.enqueue(this);
    }
  }

  private waitForRoom(): Promise<void> {
    if (this.pause === null) {
      this.pauses++;
      this.pausesSinceLog++;
      this.pausedAt = performance.now();
      this.pause = new Promise((resolve) => {
        this.resume = resolve;
      });
      this.pauseTimer = setTimeout(() => {
        this.pauseTimer = null;
        this.shedQuota = this.opts.shedBurst;
        this.release();
      }, this.opts.maxPauseMs);
      this.hooks.throttled?.("buffer_full");
      this.maybeLog();
    }
    return this.pause;
  }

  private release(): void {
    if (this.pauseTimer !== null) clearTimeout(this.pauseTimer);
    this.pauseTimer = null;
    const resume = this.resume;
    if (resume === null) return;
    this.pausedMs += performance.now() - this.pausedAt;
    this.pause = null;
    this.resume = null;
    resume();
  }

  /** One apply slice (the scheduler's turn): true while work is left. */
  runTurn(budgetMs: number): boolean {
    this.scheduled = false;
    if (this.closed) return false;
    const start = performance.now();
    const events0 = this.hooks.eventsApplied();
    const { sliceEvents } = this.opts;
    while (this.head < this.kinds.length && !this.closed) {
      const i = this.head++;
      const val = this.vals[i];
      this.vals[i] = undefined;
      this.bufferedBytes -= this.sizes[i];
      this.deliver(this.kinds[i], this.nums[i], val);
      if (performance.now() - start >= budgetMs || this.hooks.eventsApplied() - events0 >= sliceEvents) break;
    }
    if (this.closed) return false;
    this.compact();
    if (this.bufferedBytes <= this.opts.bufferBytes / 2) {
      this.shedQuota = 0;
      this.release();
    }
    if (this.head < this.kinds.length) {
      this.slicesCut++;
      this.slicesSinceLog++;
      this.hooks.throttled?.("slice");
      this.scheduled = true;
      return true;
    }
    // a report queued during the slice (delivering can queue one) was delivered in it too
    this.scheduled = false;
    return false;
  }

  /** Drop the delivered prefix once it is most of the arrays (amortized O(1) per report). */
  private compact(): void {
    const h = this.head;
    if (h === 0) return;
    if (h === this.kinds.length) {
      this.kinds.length = this.nums.length = this.vals.length = this.sizes.length = 0;
      this.head = 0;
    } else if (h >= 1024 && h * 2 >= this.kinds.length) {
      this.kinds.splice(0, h);
      this.nums.splice(0, h);
      this.vals.splice(0, h);
      this.sizes.splice(0, h);
      this.head = 0;
    }
  }

  private deliver(kind: Kind, num: number, val: unknown): void {
    const to = this.to;
    switch (kind) {
      case Kind.Frames:
        void to.frames(val as Buffer[]);
        return;
      case Kind.Up:
        to.up();
        return;
      case Kind.Down:
        to.down(val as DownCause, num);
        return;
      case Kind.Replaced:
        to.replaced?.(val as DownCause, num);
        return;
      case Kind.ReplayMessage:
        to.replay.message(num, val as Uint8Array);
        return;
      case Kind.ReplayEnd:
        to.replay.end();
        return;
      case Kind.ReplayFailed: {
        const [err, received] = val as [Error, number];
        to.replay.failed(num, err, received);
        return;
      }
      case Kind.ReplayBadFrame:
        to.replay.badFrame(val as Error);
        return;
      case Kind.ReplayThrottled:
        to.replay.throttled(num);
        return;
      case Kind.ReplaySettled:
        to.replay.settled();
        return;
    }
  }

  /** One line per stream per 10 s at most, with what happened since the last one. */
  private maybeLog(): void {
    if (!this.logBucket.take(performance.now())) return;
    this.log.warn(
      {
        event: "subscriber.stream_throttled",
        ...this.ctx(),
        bufferedBytes: this.bufferedBytes,
        budgetBytes: this.opts.bufferBytes,
        pauses: this.pausesSinceLog,
        slicesCut: this.slicesSinceLog,
        shedTotal: this.shed,
        pausedMsTotal: Math.round(this.pausedMs),
      },
      "stream over its buffer budget: reading paused until it drains (what the engine drops meanwhile is replayed)",
    );
    this.pausesSinceLog = 0;
    this.slicesSinceLog = 0;
  }
}
