/**
 * One engine event stream: its event source (event-source.ts; ZeroMQ in zmq-source.ts) delivers
 * live frames and replay answers, `SeqTracker` (seq-tracker.ts) makes the sequence decisions; this
 * file decodes, wires the two, and reports.
 *
 * The source's up/down reports drive the connection part of the state: `connecting` until the
 * first connection, `down` after a disconnect until the next one; while connected the tracker's
 * state (`live | replaying | resyncing`) applies.
 */
import { decodeBatch } from "../protocol/decode.ts";
import { decodePubMessage } from "../protocol/frames.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import type { DownCause, EventSource, EventSourceFactory } from "./event-source.ts";
import { StreamInbox } from "./inbox.ts";
import { type ResumePoint, resumePointOf, resumeTracker } from "./resume.ts";
import { type SeqSink, SeqTracker } from "./seq-tracker.ts";
import { StreamCounters } from "./stream-counters.ts";
import {
  DEFAULTS,
  type StreamConsumer,
  type StreamEndpoints,
  type SubscriberOptions,
  stripUndefined,
} from "./subscriber-options.ts";
import { SuspectLog } from "./suspect-log.ts";
import { Suspicion } from "./suspicion.ts";
import type { StreamFlow, StreamState } from "./types.ts";

export type { StreamConsumer, StreamEndpoints, SubscriberOptions };

export class StreamSubscriber extends StreamCounters {
  private readonly tracker: SeqTracker;
  private readonly opts: typeof DEFAULTS & SubscriberOptions;
  private readonly log: Logger;
  private readonly source: EventSource;
  /** what the source reports waits here, bounded in bytes, and is applied in time slices */
  private readonly inbox: StreamInbox;
  private readonly suspicion: Suspicion;
  private readonly suspectLog: SuspectLog;
  /** the running audit: last seq when it started, batches that differ or came garbled */
  private auditUpTo = -1;
  private auditMismatches = 0;
  private auditGarbled = 0;
  private connected = false;
  private everConnected = false;
  private closed = false;
  private started = false;
  private lastState: StreamState = "connecting";
  private tailTimer: NodeJS.Timeout | null = null;
  private lastActivity = performance.now();
  private probing = false;
  private downSince = performance.now();

  constructor(
    readonly endpoints: StreamEndpoints,
    private readonly consumer: StreamConsumer,
    options: SubscriberOptions,
    /** the transport (zmq-source.ts's `zmqEventSource` in the services) */
    source: EventSourceFactory,
  ) {
    super();
    this.opts = { ...DEFAULTS, ...stripUndefined(options) };
    this.log = options.log ?? silentLogger();
    this.suspectLog = new SuspectLog(this.opts.suspectLogSize);
    const sink: SeqSink = {
      apply: (seq, payload) => this.applyPayload(seq, payload),
      drop: (reason) => {
        this.suspectLog.reset();
        if (reason === "rebuild") {
          this.rebuilds++;
          this.consumer.drop(reason);
          return;
        }
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
      audited: (seq, payload) => {
        const v = this.suspectLog.check(seq, payload, () => sink.decodes?.(seq, payload) ?? true);
        if (v === "garbled") this.auditGarbled++;
        else if (v === "mismatch" && this.auditMismatches++ === 0)
          this.log.warn(
            { event: "subscriber.audit_mismatch", ...this.ctx(), seq },
            "a batch applied while suspect differs from the engine's: the stream will be rebuilt",
          );
      },
      auditEnd: (complete, firstSeq) => {
        // the engine's buffer no longer reaches back to a batch applied while suspect
        const short = complete && !this.suspectLog.reachedBack(firstSeq);
        const outcome =
          short || this.auditMismatches > 0 || this.suspectLog.overflowed
            ? "mismatch"
            : complete
              ? "match"
              : "inconclusive";
        this.log.info(
          {
            event: "subscriber.audit",
            ...this.ctx(),
            outcome,
            short,
            mismatches: this.auditMismatches,
            garbled: this.auditGarbled,
            unconfirmed: this.suspectLog.unconfirmed(),
          },
          "suspect stream audited against the engine's replay buffer",
        );
        this.suspicion.auditDone(outcome);
      },
      decodes: (seq, payload) => {
        try {
          decodeBatch(payload, this.opts.decodeLimits);
          return true;
        } catch (err) {
          this.countDecodeError(seq, err as Error);
          return false;
        }
      },
      repaired: (seq) => {
        this.decodeRepairs++;
        // the engine's copy decodes, so the wire garbled ours: what else did it garble?
        this.suspicion.fault("repaired");
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
        this.suspicion.fault("bogus_seq");
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
          "backward seq (garbage or a late copy): the engine still holds our last batch, ignored",
        );
        this.consumer.stale?.(seq);
      },
      overflow: (seq) => {
        this.log.warn({ event: "subscriber.pending_overflow", ...this.ctx(), seq }, "pending queue full");
      },
    };
    const o = this.opts;
    this.inbox = new StreamInbox(
      {
        up: () => this.onUp(),
        down: (cause, silentMs) => this.onDown(cause, silentMs),
        frames: (frames) => {
          this.onFrames(frames);
          return undefined;
        },
        replaced: (cause) => {
          if (cause === "protocol_error") this.suspicion.fault("protocol_error");
          this.socketReplacements++;
          this.consumer.socketReplaced?.();
        },
        replay: {
          message: (seq, payload) => this.tracker.onReplayMessage(seq, payload),
          end: () => this.tracker.onReplayEnd(),
          failed: (fromSeq, err) => {
            this.consumer.replayFailed?.(fromSeq, err);
            this.tracker.onReplayFailed();
          },
          // a broken frame of the answer: the tracker sees the hole in the seqs that follow,
          // and a verify that got nothing else is asked again
          badFrame: (err) => {
            this.countDecodeError(null, err);
            this.tracker.onReplayGarbled();
          },
          throttled: (delayMs) => {
            this.replaysThrottled++;
            this.consumer.replayThrottled?.(delayMs);
          },
          settled: () => {
            this.lastActivity = performance.now();
            this.emitState();
          },
        },
      },
      {
        bufferBytes: o.streamBufferBytes,
        sliceMs: o.streamSliceMs,
        sliceEvents: o.streamSliceEvents,
        share: o.streamEventSharePct / 100,
        burstMessages: o.streamBurstMessages,
        // a SUB whose queue stays full past the heartbeat timeout loses its connection
        maxPauseMs: o.heartbeatIntervalMs > 0 ? Math.min(500, o.heartbeatTimeoutMs / 4) : 500,
        shedBurst: o.receiveHighWaterMark,
      },
      { eventsApplied: () => this.eventsApplied, throttled: (why) => this.consumer.throttled?.(why) },
      this.log,
      () => this.ctx(),
    );
    this.source = source(endpoints, o, this.inbox.handlers(), this.log, () => this.ctx());
    this.tracker = new SeqTracker(sink, {
      replay: this.source.replays,
      maxPending: this.opts.maxPending,
    });
    this.suspicion = new Suspicion(o.suspectCleanMs, {
      audit: () => {
        if (!this.connected) return "busy";
        if (this.suspectLog.overflowed) return "lost";
        const from = this.suspectLog.firstUnconfirmed();
        const last = this.tracker.last;
        if (from === null || last === null || last < 0) return "empty";
        this.auditUpTo = last;
        this.auditMismatches = this.auditGarbled = 0;
        if (!this.tracker.audit(from)) return "busy";
        this.audits++;
        return "started";
      },
      confirmed: () => this.suspectLog.confirmedThrough(this.auditUpTo),
      rebuild: () => this.connected && this.tracker.rebuild(),
      settled: () =>
        this.connected &&
        this.tracker.state() === "live" &&
        !this.tracker.replaying() &&
        this.tracker.pendingCount() === 0,
      changed: () => this.emitState(),
      suspected: (cause, first) => {
        if (!first) return;
        this.suspectLog.begin();
        this.suspects++;
        this.log.warn(
          { event: "subscriber.suspect", ...this.ctx(), cause, lastSeq: this.tracker.lastSeq() },
          "signs of a garbling transport: the stream's claims do not count until it is rebuilt",
        );
        this.consumer.suspected?.();
      },
      rebuilding: () =>
        this.log.warn(
          { event: "subscriber.rebuild", ...this.ctx(), cleanMs: o.suspectCleanMs },
          "suspect stream's audit failed: dropping it and replaying the engine's buffer",
        ),
      verified: () => {
        this.suspectLog.end();
        this.verifications++;
        this.log.info(
          { event: "subscriber.verified", ...this.ctx(), lastSeq: this.tracker.lastSeq() },
          "every batch applied while suspect matches the engine's: the stream counts again",
        );
        this.consumer.verified?.();
        this.emitState();
      },
      trusted: () => {
        this.suspectLog.end();
        this.log.info(
          { event: "subscriber.trusted", ...this.ctx(), lastSeq: this.tracker.lastSeq() },
          "rebuilt cleanly: the stream counts again",
        );
        this.emitState();
      },
    });
  }

  /** Where a peer replica could resume this stream from (null unless live with a remembered last batch). */
  resumePoint(): ResumePoint | null {
    return this.closed || !this.connected || this.suspicion.isSuspect() ? null : resumePointOf(this.tracker);
  }

  /** The stream's buffer: bytes received and not applied yet, peaks, pauses, cut slices. */
  flow(): StreamFlow {
    return this.inbox.flow();
  }

  get lastSeq(): number | null {
    return this.tracker.lastSeq();
  }

  state(): StreamState {
    if (this.closed) return "down";
    if (!this.connected) return this.everConnected ? "down" : "connecting";
    if (this.suspicion.isSuspect()) return "suspect";
    return this.tracker.state();
  }

  /**
   * Drop the stream's entries and take the engine's replay buffer again from its oldest batch:
   * asked from outside when the stream's claims keep proving wrong (the gateway's prediction
   * feedback) although its seqs showed nothing. False: not now (down, or a replay runs).
   */
  rebuild(reason: string): boolean {
    if (this.closed || !this.connected || !this.tracker.rebuild()) return false;
    this.log.warn(
      { event: "subscriber.rebuild", ...this.ctx(), reason, lastSeq: this.tracker.lastSeq() },
      "rebuild requested: dropping the stream's entries and replaying the engine's buffer",
    );
    this.emitState();
    return true;
  }

  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.source.start();
    const every = this.opts.tailCheckMs;
    if (every > 0 && this.source.replays) {
      this.tailTimer = setInterval(() => this.maybeProbe(), Math.max(10, Math.floor(every / 2)));
      this.tailTimer.unref();
    }
  }

  private maybeProbe(): void {
    if (this.closed || !this.connected || performance.now() - this.lastActivity < this.opts.tailCheckMs)
      return;
    this.lastActivity = performance.now();
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
    this.suspicion.close();
    if (this.tailTimer) clearInterval(this.tailTimer);
    this.tailTimer = null;
    this.inbox.close();
    await this.source.close();
  }

  // --- the source -----------------------------------------------------------------------

  private ctx(): Record<string, unknown> {
    return this.opts.logContext ?? { endpoint: this.endpoints.events };
  }

  private onUp(): void {
    if (this.closed || this.connected) return;
    const first = !this.everConnected;
    if (first) this.log.info({ event: "subscriber.connected", ...this.ctx() }, "connected");
    else {
      this.reconnects++;
      this.log.info(
        { event: "subscriber.reconnected", ...this.ctx(), downMs: performance.now() - this.downSince },
        "reconnected",
      );
      this.consumer.reconnected?.();
    }
    this.markConnected();
    this.emitState();
  }

  private onDown(cause: DownCause, silentMs: number): void {
    if (this.closed || !this.connected) return;
    this.connected = false;
    this.downSince = performance.now();
    if (cause === "stalled") {
      this.stalls++;
      this.log.warn(
        {
          event: "subscriber.stalled",
          ...this.ctx(),
          silentMs,
          heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs,
        },
        "no answer to heartbeats: stream down (partition, stopped engine, or an idle engine gone)",
      );
      this.consumer.stalled?.();
    } else {
      this.log.warn({ event: "subscriber.disconnected", ...this.ctx(), cause }, "disconnected");
    }
    this.emitState();
  }

  /** The stream is up: start the tracker on the first connection, tell it about a reconnect after. */
  private markConnected(): void {
    this.connected = true;
    const first = !this.everConnected;
    this.everConnected = true;
    if (first && this.opts.resume !== undefined) resumeTracker(this.tracker, this.opts.resume);
    else if (first) this.tracker.start(this.opts.fromSeq, this.opts.initialReplay ?? true);
    else this.tracker.reconnected();
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
    this.lastActivity = performance.now();
    this.tracker.onLive(seq, payload);
    this.emitState();
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
    this.source.requestReplay(fromSeq, attempt);
    this.emitState();
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
    // the bytes as applied (a repair's good copy): a store, or a hash while suspect
    this.suspectLog.note(seq, payload);
    return true;
  }

  private countDecodeError(seq: number | null, err: Error): void {
    this.decodeErrors++;
    // no valid framing: the transport garbles (a bad payload at a known seq is asked again first)
    if (seq === null) this.suspicion.fault("framing");
    this.log.warn(
      { event: "subscriber.decode_error", ...this.ctx(), seq, err: err.message },
      "cannot decode message",
    );
    this.consumer.decodeError(seq, err);
  }

  private emitState(): void {
    this.suspicion?.check();
    // a stream that stays suspect is audited as it goes, before its window outgrows the buffer
    if (this.suspicion?.isSuspect() && this.suspectLog.unconfirmed() >= this.opts.suspectLogSize / 10)
      this.suspicion.due();
    const s = this.state();
    if (s === this.lastState) return;
    const prev = this.lastState;
    this.lastState = s;
    this.consumer.stateChanged?.(s, prev);
  }
}
