/**
 * One engine event stream over real ZeroMQ sockets: a SUB on the engine's PUB endpoint and, per
 * replay request, a DEALER on its replay ROUTER. Sequence decisions are made by `SeqTracker`
 * (seq-tracker.ts); this file only moves bytes, decodes, and reports.
 *
 * Socket monitor events drive the connection part of the state: `connecting` until the first
 * connection, `down` after a disconnect until the next one; while connected the tracker's state
 * (`live | replaying | resyncing`) applies.
 */
import * as zmq from "zeromq";
import { type DecodeLimits, decodeBatch } from "../protocol/decode.ts";
import { decodePubMessage } from "../protocol/frames.ts";
import { decodeReplayResponse, encodeReplayRequest } from "../protocol/replay.ts";
import type { EventBatch } from "../protocol/types.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { type DropReason, type SeqSink, SeqTracker } from "./seq-tracker.ts";
import type { StreamState } from "./types.ts";

export interface StreamEndpoints {
  /** PUB endpoint to connect the SUB to, e.g. tcp://10.0.0.5:5557 */
  events: string;
  /** replay ROUTER endpoint, or null when the engine has none */
  replay: string | null;
  /** topic prefix to subscribe to; "" = everything */
  topic: string;
}

/** What a subscriber hands on; called synchronously and in seq order. */
export interface StreamConsumer {
  batch(seq: number, batch: EventBatch, unknownEvents: number): void;
  /** A message that could not be decoded (seq null when even the framing was bad). */
  decodeError(seq: number | null, err: Error): void;
  /** Every entry of the stream must be forgotten. */
  drop(reason: DropReason): void;
  gap?(from: number, to: number, recoverable: boolean): void;
  /** an undecodable batch was applied from a good copy */
  decodeRepaired?(seq: number): void;
  /** a live seq beyond the engine's newest, discarded */
  bogus?(seq: number): void;
  /** a replay was held back by the per-stream rate bound */
  replayThrottled?(delayMs: number): void;
  /** a late copy of an old batch, verified stale and ignored */
  stale?(seq: number): void;
  replayRequested?(fromSeq: number): void;
  /** a replay could not be completed (timeout, socket error) */
  replayFailed?(fromSeq: number, err: Error): void;
  stateChanged?(state: StreamState, previous: StreamState): void;
}

export interface SubscriberOptions {
  /** Idle time without a replay answer before the replay counts as failed (ms). */
  replayTimeoutMs?: number;
  /** Live batches kept while a replay runs. */
  maxPending?: number;
  /** Most batches one replay may deliver before it is cut off (and counted as failed). */
  maxReplayBatches?: number;
  decodeLimits?: Partial<DecodeLimits>;
  /** First reconnect delay (ms); zmq doubles it up to `reconnectMaxMs`, jittered per socket. */
  reconnectMs?: number;
  reconnectMaxMs?: number;
  /** Receive high-water mark of the SUB socket (messages). */
  receiveHighWaterMark?: number;
  /** Replay from this seq on first connect instead of the engine's whole buffer. */
  fromSeq?: number;
  /** Ask for the engine's buffer on first connect (default true; `events tail` starts live). */
  initialReplay?: boolean;
  /**
   * A live stream silent for this long asks the replay endpoint for anything after its last seq,
   * so a lost final batch does not leave the index stale until the next one (ms; 0 = never).
   */
  tailCheckMs?: number;
  /**
   * Replays one stream may start per second on average (a token bucket with this many tokens):
   * whatever goes wrong, a stream never asks its engine for replays in a tight loop.
   */
  maxReplaysPerSecond?: number;
  /** First delay before a replay that retries one that fell short (ms; doubles per attempt). */
  replayRetryMs?: number;
  log?: Logger;
  /** Log context (pod, stream). */
  logContext?: Record<string, unknown>;
}

const DEFAULTS = {
  replayTimeoutMs: 3000,
  maxPending: 10_000,
  maxReplayBatches: 200_000,
  reconnectMs: 100,
  reconnectMaxMs: 5000,
  receiveHighWaterMark: 100_000,
  tailCheckMs: 10_000,
  maxReplaysPerSecond: 10,
  replayRetryMs: 100,
};

/** `delay * [0.5, 1)`: spreads reconnects of many subscribers after a shared outage. */
export function jitter(delayMs: number, rand: () => number = Math.random): number {
  return Math.max(1, Math.round(delayMs * (0.5 + rand() * 0.5)));
}

/** Capped exponential backoff with jitter for the n-th (0-based) retry. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, rand?: () => number): number {
  return jitter(Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30)), rand);
}

export class StreamSubscriber {
  private readonly tracker: SeqTracker;
  private readonly opts: typeof DEFAULTS & SubscriberOptions;
  private readonly log: Logger;
  private sub: zmq.Subscriber | null = null;
  private dealer: zmq.Dealer | null = null;
  private connected = false;
  private everConnected = false;
  private closed = false;
  private started = false;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private lastState: StreamState = "connecting";
  private tailTimer: NodeJS.Timeout | null = null;
  private lastActivity = Date.now();
  private probing = false;
  private readonly loops = new Set<Promise<void>>();
  private readonly sleeps = new Set<() => void>();
  private tokens: number;
  private tokensAt = Date.now();
  private throttleLoggedAt = 0;
  // counters (the manager turns them into metrics)
  eventsApplied = 0;
  batchesApplied = 0;
  decodeErrors = 0;
  gaps = 0;
  replays = 0;
  resyncs = 0;
  restarts = 0;
  duplicates = 0;
  /** undecodable batches applied from a good copy, and those without one */
  decodeRepairs = 0;
  decodeLosses = 0;
  /** live seqs beyond the engine's buffer, discarded */
  bogusSeqs = 0;
  /** replays held back by the per-stream rate bound */
  replaysThrottled = 0;
  /** late backward seqs verified stale (not restarts) */
  staleBatches = 0;
  /** idle tail checks sent (not counted as replays) */
  probes = 0;

  constructor(
    readonly endpoints: StreamEndpoints,
    private readonly consumer: StreamConsumer,
    options: SubscriberOptions = {},
  ) {
    this.opts = { ...DEFAULTS, ...stripUndefined(options) };
    this.log = options.log ?? silentLogger();
    this.tokens = this.opts.maxReplaysPerSecond;
    const sink: SeqSink = {
      apply: (seq, payload) => this.applyPayload(seq, payload),
      drop: (reason) => {
        if (reason === "restart") this.restarts++;
        else this.resyncs++;
        this.log.warn(
          { event: reason === "restart" ? "subscriber.restart" : "subscriber.resync", ...this.ctx() },
          reason === "restart"
            ? "engine restarted: dropping the stream's entries"
            : "unrecoverable gap: resyncing",
        );
        this.consumer.drop(reason);
      },
      requestReplay: (fromSeq, attempt) => this.requestReplay(fromSeq, attempt),
      repaired: (seq) => {
        this.decodeRepairs++;
        this.log.info(
          { event: "subscriber.decode_repaired", ...this.ctx(), seq },
          "undecodable batch applied from the engine's good copy",
        );
        this.consumer.decodeRepaired?.(seq);
      },
      decodeLost: (seq) => {
        this.decodeLosses++;
        this.log.warn(
          { event: "subscriber.decode_lost", ...this.ctx(), seq },
          "no decodable copy of the batch: dropping the stream's entries and rebuilding",
        );
      },
      bogus: (seq) => {
        this.bogusSeqs++;
        this.log.warn(
          { event: "subscriber.bogus_seq", ...this.ctx(), seq, last: this.tracker.lastSeq() },
          "live seq beyond everything the engine holds: discarded",
        );
        this.consumer.bogus?.(seq);
      },
      gap: (from, to, recoverable) => {
        this.gaps++;
        this.log.warn({ event: "subscriber.gap", ...this.ctx(), from, to, recoverable }, "seq gap");
        this.consumer.gap?.(from, to, recoverable);
      },
      duplicate: () => {
        this.duplicates++;
      },
      stale: (seq) => {
        this.staleBatches++;
        this.log.info(
          { event: "subscriber.stale_batch", ...this.ctx(), seq, last: this.tracker.lastSeq() },
          "late copy of an old batch: the engine still holds our last batch, ignored",
        );
        this.consumer.stale?.(seq);
      },
      overflow: (seq) => {
        this.log.warn({ event: "subscriber.pending_overflow", ...this.ctx(), seq }, "pending queue full");
      },
    };
    this.tracker = new SeqTracker(sink, {
      replay: endpoints.replay !== null,
      maxPending: this.opts.maxPending,
    });
  }

  get lastSeq(): number | null {
    return this.tracker.lastSeq();
  }

  state(): StreamState {
    if (this.closed) return "down";
    if (!this.connected) return this.everConnected ? "down" : "connecting";
    return this.tracker.state();
  }

  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.openSub();
    const every = this.opts.tailCheckMs;
    if (every > 0 && this.endpoints.replay !== null) {
      this.tailTimer = setInterval(() => this.maybeProbe(), Math.max(10, Math.floor(every / 2)));
      this.tailTimer.unref();
    }
  }

  private maybeProbe(): void {
    if (this.closed || !this.connected || Date.now() - this.lastActivity < this.opts.tailCheckMs) return;
    this.lastActivity = Date.now();
    this.probing = true;
    try {
      this.tracker.probe();
    } finally {
      this.probing = false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.connected = false;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.tailTimer) clearInterval(this.tailTimer);
    this.tailTimer = null;
    this.sub?.close();
    this.sub = null;
    this.dealer?.close();
    this.dealer = null;
    for (const wake of [...this.sleeps]) wake();
    this.sleeps.clear();
    await Promise.allSettled([...this.loops]);
  }

  private track(p: Promise<void>): void {
    this.loops.add(p);
    p.finally(() => this.loops.delete(p));
  }

  // --- sockets --------------------------------------------------------------------------

  private ctx(): Record<string, unknown> {
    return this.opts.logContext ?? { endpoint: this.endpoints.events };
  }

  private openSub(): void {
    if (this.closed) return;
    const sub = new zmq.Subscriber({
      linger: 0,
      reconnectInterval: jitter(this.opts.reconnectMs * 2),
      reconnectMaxInterval: this.opts.reconnectMaxMs,
      receiveHighWaterMark: this.opts.receiveHighWaterMark,
    });
    this.sub = sub;
    const up = () => {
      if (this.closed || this.sub !== sub || this.connected) return;
      this.attempt = 0;
      this.log.info(
        { event: "subscriber.connected", ...this.ctx(), first: !this.everConnected },
        "connected",
      );
      this.markConnected();
      this.emitState();
    };
    sub.events.on("connect", up);
    sub.events.on("handshake", up);
    sub.events.on("disconnect", () => {
      if (this.closed || this.sub !== sub || !this.connected) return;
      this.connected = false;
      this.log.warn({ event: "subscriber.disconnected", ...this.ctx() }, "disconnected");
      this.emitState();
    });
    try {
      sub.subscribe(this.endpoints.topic);
      sub.connect(this.endpoints.events);
    } catch (err) {
      this.log.error({ event: "subscriber.connect_error", ...this.ctx(), err }, "cannot connect");
      this.retrySub(sub);
      return;
    }
    this.track(this.receiveLoop(sub));
  }

  /** The stream is up: start the tracker on the first connection, tell it about a reconnect after. */
  private markConnected(): void {
    this.connected = true;
    const first = !this.everConnected;
    this.everConnected = true;
    if (first) this.tracker.start(this.opts.fromSeq, this.opts.initialReplay ?? true);
    else this.tracker.reconnected();
  }

  /** Replace a broken SUB after a jittered, capped backoff. */
  private retrySub(sub: zmq.Subscriber): void {
    if (this.sub === sub) this.sub = null;
    try {
      sub.close();
    } catch {
      // already closed
    }
    if (this.connected) {
      this.connected = false;
      this.emitState();
    }
    if (this.closed) return;
    const delay = backoffDelay(this.attempt++, this.opts.reconnectMs, this.opts.reconnectMaxMs);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.openSub();
    }, delay);
  }

  private async receiveLoop(sub: zmq.Subscriber): Promise<void> {
    try {
      for await (const frames of sub) {
        if (this.closed || this.sub !== sub) return;
        this.onFrames(frames);
      }
    } catch (err) {
      if (this.closed || this.sub !== sub) return;
      this.log.error({ event: "subscriber.socket_error", ...this.ctx(), err }, "SUB socket failed");
      this.retrySub(sub);
    }
  }

  private onFrames(frames: Buffer[]): void {
    let seq: number;
    let payload: Uint8Array;
    try {
      const m = decodePubMessage(frames);
      seq = m.seq;
      payload = m.payload;
    } catch (err) {
      this.countDecodeError(null, err as Error);
      return;
    }
    // a message proves the connection even if the monitor event is late
    if (!this.connected) this.markConnected();
    this.lastActivity = Date.now();
    this.tracker.onLive(seq, payload);
    this.emitState();
  }

  /** ms to wait before the next replay may start (token bucket), taking a token. */
  private replayToken(): number {
    const rate = Math.max(0.1, this.opts.maxReplaysPerSecond);
    const now = Date.now();
    this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) / 1000) * rate);
    this.tokensAt = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / rate) * 1000);
  }

  private requestReplay(fromSeq: number, attempt: number): void {
    if (this.probing) {
      this.probes++;
      this.log.debug(
        { event: "subscriber.tail_check", ...this.ctx(), fromSeq },
        "idle: checking for lost batches",
      );
    } else {
      this.replays++;
      this.log.info({ event: "subscriber.replay", ...this.ctx(), fromSeq }, "requesting replay");
      this.consumer.replayRequested?.(fromSeq);
    }
    const retryWait =
      attempt > 0 ? backoffDelay(attempt - 1, this.opts.replayRetryMs, this.opts.reconnectMaxMs) : 0;
    const bucketWait = this.replayToken();
    if (bucketWait > 0) {
      this.replaysThrottled++;
      this.consumer.replayThrottled?.(bucketWait);
      // one line per burst, not per replay: the bound exists because replays can come in floods
      if (Date.now() - this.throttleLoggedAt > 5000) {
        this.throttleLoggedAt = Date.now();
        this.log.warn(
          { event: "subscriber.replay_throttled", ...this.ctx(), fromSeq, delayMs: bucketWait },
          "replay rate bound reached: replays held back",
        );
      }
    }
    if (attempt > 0)
      this.log.info(
        { event: "subscriber.replay_retry", ...this.ctx(), fromSeq, attempt },
        "the last replay ended short of the queued batch: retrying",
      );
    this.track(this.runReplay(fromSeq, Math.max(retryWait, bucketWait)));
    this.emitState();
  }

  /** A timer that close() cuts short. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.sleeps.delete(done);
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      this.sleeps.add(done);
    });
  }

  /** One replay: a fresh DEALER (so no late answer of an earlier request can mix in). */
  private async runReplay(fromSeq: number, delayMs: number): Promise<void> {
    // let the caller finish its synchronous step first: the tracker expects answers later
    await Promise.resolve();
    if (delayMs > 0) await this.sleep(delayMs);
    if (this.closed) return;
    const endpoint = this.endpoints.replay as string;
    const dealer = new zmq.Dealer({
      linger: 0,
      receiveTimeout: this.opts.replayTimeoutMs,
      sendTimeout: this.opts.replayTimeoutMs,
      receiveHighWaterMark: 10_000,
    });
    this.dealer = dealer;
    let count = 0;
    try {
      dealer.connect(endpoint);
      await dealer.send(encodeReplayRequest(fromSeq));
      for (;;) {
        const frames = await dealer.receive();
        if (this.closed) return;
        let r: ReturnType<typeof decodeReplayResponse>;
        try {
          r = decodeReplayResponse(frames);
        } catch (err) {
          // a broken frame of the answer: the tracker sees the hole in the seqs that follow
          this.countDecodeError(null, err as Error);
          continue;
        }
        if (r.seq === null) {
          this.tracker.onReplayEnd();
          break;
        }
        if (++count > this.opts.maxReplayBatches)
          throw new Error(`replay exceeded ${this.opts.maxReplayBatches} batches`);
        this.tracker.onReplayMessage(r.seq, r.payload);
      }
    } catch (err) {
      if (this.closed) return;
      this.log.warn(
        { event: "subscriber.replay_failed", ...this.ctx(), fromSeq, received: count, err },
        "replay failed",
      );
      this.consumer.replayFailed?.(fromSeq, err as Error);
      this.tracker.onReplayFailed();
    } finally {
      if (this.dealer === dealer) this.dealer = null;
      dealer.close();
      this.lastActivity = Date.now();
      if (!this.closed) this.emitState();
    }
  }

  /** false: the payload does not decode (the tracker then asks the engine for a good copy). */
  private applyPayload(seq: number, payload: Uint8Array): boolean {
    let r: ReturnType<typeof decodeBatch>;
    try {
      r = decodeBatch(payload, this.opts.decodeLimits);
    } catch (err) {
      this.countDecodeError(seq, err as Error);
      return false;
    }
    this.batchesApplied++;
    this.eventsApplied += r.batch.events.length;
    this.consumer.batch(seq, r.batch, r.unknownEvents);
    return true;
  }

  private countDecodeError(seq: number | null, err: Error): void {
    this.decodeErrors++;
    this.log.warn(
      { event: "subscriber.decode_error", ...this.ctx(), seq, err: err.message },
      "cannot decode message",
    );
    this.consumer.decodeError(seq, err);
  }

  private emitState(): void {
    const s = this.state();
    if (s === this.lastState) return;
    const prev = this.lastState;
    this.lastState = s;
    this.consumer.stateChanged?.(s, prev);
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
