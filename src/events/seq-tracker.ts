/**
 * The sequence logic of one engine event stream, free of sockets and timers: a pure state
 * machine fed with live messages, replay messages and replay outcomes, which tells its sink
 * (seq-sink.ts) what to apply, when to drop the stream's entries and when to ask for a replay.
 * The rules (gaps, restarts, stale and bogus seqs, repairs, audits) are in docs/events.md,
 * "Sequence rules".
 */
import {
  RecentBatches,
  type SeqSink,
  SeqStrikes,
  type SeqTrackerOptions,
  type TrackerState,
} from "./seq-sink.ts";

export type { DropReason, SeqSink, SeqTrackerOptions, TrackerState } from "./seq-sink.ts";
export { fingerprint } from "./seq-sink.ts";

type ReplayKind = "initial" | "gap" | "verify" | "probe" | "audit";

interface Msg {
  seq: number;
  payload: Uint8Array;
}

export class SeqTracker {
  /** last applied seq, null before the first batch (or after a drop). */
  last: number | null = null;
  private phase: "idle" | "live" | "replaying" = "idle";
  private resyncing = false;
  private readonly hasReplay: boolean;
  private readonly maxPending: number;
  private readonly pending: Msg[] = [];
  /** the last applied batches by seq (a peer's resume point is checked against them: resume.ts) */
  readonly recent: RecentBatches;
  // the running replay
  private replayKind: ReplayKind = "initial";
  private replayFrom = 0;
  private replayFirst = true;
  private replayAbandon = false;
  private replayIgnore = false;
  /** the late backward seq a running verify replay was started for (null: a reconnect check) */
  private lateSeq: number | null = null;
  /** the queued live seq the gap replays did not reach, and how many did not */
  private readonly short = new SeqStrikes();
  private readonly maxGapRetries: number;
  /** the undecodable seq being asked again, how often, and whether the running replay stops there */
  private readonly bad = new SeqStrikes();
  private replayCut = false;
  private readonly maxRepairs: number;
  /** the running replay's answer had a broken frame, and a verify answer that proved nothing */
  private replayGarbled = false;
  private auditFirst: number | null = null;
  private verifyFailed = false;
  private verifyRetries = 0;
  private readonly maxVerifyRetries: number;
  /** live messages dropped because the queue was full */
  overflowed = 0;

  constructor(
    private readonly sink: SeqSink,
    opts: SeqTrackerOptions,
  ) {
    this.hasReplay = opts.replay;
    this.maxPending = Math.max(1, opts.maxPending ?? 10_000);
    this.maxGapRetries = Math.max(1, opts.maxGapRetries ?? 3);
    this.maxRepairs = Math.max(0, opts.maxRepairs ?? 3);
    this.maxVerifyRetries = Math.max(0, opts.maxVerifyRetries ?? 3);
    this.recent = new RecentBatches(opts.recentSize ?? 64);
  }

  /** last applied seq for status reports (null before the first batch). */
  lastSeq(): number | null {
    return this.last === null || this.last < 0 ? null : this.last;
  }

  state(): TrackerState {
    if (this.resyncing) return "resyncing";
    // an idle probe or an audit keeps the stream live unless it finds something wrong
    const quiet = this.replayKind === "probe" || this.replayKind === "audit";
    return this.phase === "replaying" && !quiet ? "replaying" : "live";
  }

  replaying(): boolean {
    return this.phase === "replaying";
  }

  pendingCount(): number {
    return this.pending.length;
  }

  /**
   * First connection: replay from `fromSeq` (default 0: whatever the engine's buffer holds; only an
   * explicit fromSeq makes a later first seq a gap). `initialReplay` false starts with the live stream.
   */
  start(fromSeq?: number, initialReplay = true): void {
    if (this.phase !== "idle") return;
    if (this.hasReplay && (initialReplay || fromSeq !== undefined)) {
      if (fromSeq !== undefined && fromSeq > 0) {
        // behave as if everything before fromSeq was seen: a later first seq is a gap
        this.last = fromSeq - 1;
        this.beginReplay("gap", fromSeq);
      } else {
        this.beginReplay("initial", 0);
      }
    } else {
      this.phase = "live";
    }
  }

  /** Forget everything and take the replay buffer again from its oldest batch; only when live and idle. */
  rebuild(): boolean {
    if (this.phase !== "live") return false;
    this.sink.drop("rebuild");
    this.forget();
    this.resyncing = !this.hasReplay;
    if (this.hasReplay) this.beginReplay("initial", 0);
    return true;
  }

  /** The live connection came back after a disconnect: verify the engine is the same process. */
  reconnected(): void {
    if (this.phase === "idle") {
      this.start();
      return;
    }
    if (!this.hasReplay) {
      // whatever was published while we were away is lost, a BlockRemoved maybe: rebuild
      if (this.last !== null) this.unrecoverable();
      return;
    }
    if (this.phase === "replaying") {
      // batches queued so far came over the old connection: the check after this replay asks
      // from `last` again, which brings them back if the engine is still the same process
      this.pending.length = 0;
      // the rest of the running replay may come from a new process: ignore it
      this.replayIgnore = true;
      return;
    }
    this.checkAfterReconnect();
  }

  private checkAfterReconnect(): void {
    const last = this.last;
    if (last === null || last < 0) this.beginReplay("initial", 0);
    else if (this.recent.has(last)) this.beginReplay("verify", last);
    // nothing applied at `last` yet (a start from --from-seq): resume the pick-up
    else this.beginReplay("gap", last + 1);
  }

  /** Ask for anything after `last` (a lost final batch shows no gap until the next one arrives). */
  probe(): boolean {
    if (!this.hasReplay || this.phase !== "live" || this.last === null || this.pending.length > 0)
      return false;
    this.beginReplay("probe", this.last + 1);
    return true;
  }

  /**
   * Replay from `fromSeq` (<= last) to check what was applied: replayed batches up to `last` go to
   * the sink's `audited` instead of being applied, later ones are applied as usual, and
   * `auditEnd` reports the outcome. Only when live and idle with a replay endpoint.
   */
  audit(fromSeq: number): boolean {
    const last = this.last;
    if (!this.hasReplay || this.phase !== "live" || last === null || this.pending.length > 0) return false;
    if (fromSeq < 0 || fromSeq > last) return false;
    this.beginReplay("audit", fromSeq);
    return true;
  }

  onLive(seq: number, payload: Uint8Array): void {
    if (this.phase === "idle") this.phase = "live";
    if (this.phase === "replaying") {
      this.enqueue(seq, payload);
      return;
    }
    if (!this.processLive(seq, payload, false)) this.enqueue(seq, payload);
  }

  /** A message of the running replay's answer was too broken to show a seq. */
  onReplayGarbled(): void {
    if (this.phase === "replaying") this.replayGarbled = true;
  }

  onReplayMessage(seq: number, payload: Uint8Array): void {
    if (this.phase !== "replaying" || this.replayAbandon || this.replayIgnore || this.replayCut) return;
    if (this.verifyFailed) return;
    if (this.replayKind === "audit") {
      if (this.replayFirst) this.auditFirst = seq;
      this.replayFirst = false;
      if (this.last !== null && seq <= this.last) {
        this.sink.audited?.(seq, payload);
        return;
      }
    }
    if (this.replayFirst) {
      this.replayFirst = false;
      if (this.replayKind === "verify") {
        const last = this.last as number;
        if (seq === last && this.recent.matches(seq, payload) === true) {
          // same engine: the backward message that started this check was garbage or stale
          this.verifyRetries = 0;
          if (this.lateSeq !== null) this.sink.stale?.(this.lateSeq);
          return;
        }
        // the engine never answers below the asked seq, and a batch at `last` that does not
        // decode was garbled in transit: either way the answer proves nothing, ask again
        if (seq < last || this.sink.decodes?.(seq, payload) === false) {
          this.verifyFailed = true;
          return;
        }
        if (seq === last) {
          // a different batch at a seq we have seen: the engine restarted while we were away
          this.verifyRetries = 0;
          this.replayAbandon = true;
          return;
        }
        this.verifyRetries = 0;
        // the buffer moved past our last batch: what happened in between is unknown
        this.sink.gap?.(last + 1, seq - 1, false);
        this.unrecoverable();
        this.applyMsg(seq, payload);
        return;
      }
      if ((this.replayKind === "gap" || this.replayKind === "probe") && seq > this.replayFrom) {
        // the engine's buffer no longer holds the start of the gap (reported when detected) or
        // the undecodable batch asked again
        if (this.bad.seq === this.replayFrom) this.lostBad();
        else this.unrecoverable();
        this.applyMsg(seq, payload);
        return;
      }
    }
    const last = this.last;
    if (last === null || seq === last + 1) {
      this.applyMsg(seq, payload);
    } else if (seq <= last) {
      this.sink.duplicate?.(seq);
    } else {
      // a hole inside the engine's own buffer (a failed encode loses a seq)
      this.sink.gap?.(last + 1, seq - 1, false);
      this.unrecoverable();
      this.applyMsg(seq, payload);
    }
  }

  onReplayEnd(): void {
    if (this.phase !== "replaying") return;
    const audit = this.replayKind === "audit";
    const complete = !this.replayIgnore && !this.replayCut;
    const first = this.auditFirst;
    this.endReplay();
    if (audit) this.sink.auditEnd?.(complete, first);
  }

  private endReplay(): void {
    if (this.replayIgnore) {
      // reconnected meanwhile: check that the engine is still the process we followed
      this.checkAfterReconnect();
      return;
    }
    if (this.replayCut) {
      // an undecodable batch in this answer: ask again from it
      this.phase = "live";
      this.repair();
      return;
    }
    if (this.verifyFailed || (this.replayKind === "verify" && this.replayFirst && this.replayGarbled)) {
      this.retryVerify();
      return;
    }
    // a verify replay without our last batch: the engine's newest seq is below ours (restarted)
    if (this.replayAbandon || (this.replayKind === "verify" && this.replayFirst)) {
      this.verifyRetries = 0;
      this.restart();
      return;
    }
    // an empty first pick-up: the engine has published nothing yet, so its next seq is 0
    if (this.replayKind === "initial" && this.replayFirst && this.last === null) this.last = -1;
    this.phase = "live";
    if (this.replayKind === "gap") this.checkShort();
    this.drain();
  }

  /** The replay failed (no answer in time, socket error). */
  onReplayFailed(): void {
    if (this.phase !== "replaying") return;
    const audit = this.replayKind === "audit";
    this.failReplay();
    if (audit) this.sink.auditEnd?.(false, null);
  }

  private failReplay(): void {
    if (this.replayIgnore) {
      // its answer no longer mattered; check the (re)connected engine instead
      this.endReplay();
      return;
    }
    if (this.replayCut || (this.bad.seq >= 0 && this.replayFrom === this.bad.seq)) {
      // no good copy of the undecodable batch to be had
      this.phase = "live";
      this.lostBad();
      this.drain();
      return;
    }
    if (this.replayAbandon) {
      // the engine restarted and its replay is gone too: rebuild from the live stream
      this.sink.drop("restart");
      this.forget();
      this.resyncing = true;
      this.phase = "live";
      return;
    }
    // an initial pick-up, an idle probe or an audit that fails loses nothing we had; any other replay
    // leaves a hole
    if (
      this.replayKind === "gap" ||
      this.replayKind === "verify" ||
      (this.replayKind === "initial" && this.last !== null)
    )
      this.unrecoverable();
    this.phase = "live";
    this.drain();
  }

  // ---------------------------------------------------------------------------------------

  private enqueue(seq: number, payload: Uint8Array): void {
    if (this.pending.length >= this.maxPending) {
      this.overflowed++;
      this.sink.overflow?.(seq);
      return;
    }
    this.pending.push({ seq, payload });
  }

  /** Returns false when the message must wait (a replay was started for the gap before it). */
  private processLive(seq: number, payload: Uint8Array, fromQueue: boolean): boolean {
    const last = this.last;
    if (last === null || seq === last + 1) {
      this.applyMsg(seq, payload);
      // contiguous again after a rebuild (a queue drain clears it when the queue is empty)
      if (!fromQueue && last !== null) this.resyncing = false;
      return true;
    }
    if (seq <= last) {
      const m = this.recent.matches(seq, payload);
      if (m === true || (m === null && fromQueue)) {
        this.sink.duplicate?.(seq);
        return true;
      }
      if (this.hasReplay && this.recent.has(last)) {
        // too old for the ring (a late copy or a new process), or another payload at a seq we
        // applied (garbage on the wire or a new process; also a garbled live copy queued while
        // a replay brought the good one): the engine's batch at `last` tells which, so ask for
        // it before dropping anything (restarts are rare, verifies cheap)
        this.beginReplay("verify", last);
        this.lateSeq = seq;
        return true;
      }
      this.restart();
      // with a replay, the new process's buffer (asked from 0) brings this batch again
      if (this.phase !== "replaying") this.applyMsg(seq, payload);
      return true;
    }
    // gap
    if (this.hasReplay) {
      const retry = seq === this.short.seq ? this.short.count : 0;
      // a retry for the same batch is the same gap, reported once
      if (retry === 0) this.sink.gap?.(last + 1, seq - 1, true);
      this.beginReplay("gap", last + 1, retry);
      return false;
    }
    this.sink.gap?.(last + 1, seq - 1, false);
    this.unrecoverable();
    this.applyMsg(seq, payload);
    return true;
  }

  /**
   * After a gap replay: the engine answered with everything it had, so a queued head still beyond
   * `last + 1` was never published by it. Count such replays; past the bound discard the head.
   */
  private checkShort(): void {
    const head = this.pending[0];
    const last = this.last;
    if (head === undefined || last === null || head.seq <= last + 1) {
      this.short.reset();
      return;
    }
    if (this.short.hit(head.seq) < this.maxGapRetries) return;
    this.pending.shift();
    this.short.reset();
    this.sink.bogus?.(head.seq);
  }

  private drain(): void {
    while (this.pending.length > 0 && this.phase === "live") {
      const m = this.pending[0];
      if (!this.processLive(m.seq, m.payload, true)) return; // a new replay covers the gap first
      this.pending.shift();
    }
    if (this.phase === "live" && this.pending.length === 0) this.resyncing = false;
  }

  private beginReplay(kind: ReplayKind, from: number, attempt = 0): void {
    this.phase = "replaying";
    this.replayKind = kind;
    this.replayFrom = from;
    this.replayFirst = true;
    this.replayAbandon = false;
    this.replayIgnore = false;
    this.lateSeq = null;
    this.replayCut = false;
    this.replayGarbled = false;
    this.auditFirst = null;
    this.verifyFailed = false;
    this.sink.requestReplay(from, attempt);
  }

  /** A verify answer that proved nothing: ask again (bounded), then take it for a restart. */
  private retryVerify(): void {
    if (this.verifyRetries >= this.maxVerifyRetries) {
      this.verifyRetries = 0;
      this.restart();
      return;
    }
    this.verifyRetries++;
    const late = this.lateSeq;
    this.beginReplay("verify", this.last as number, this.verifyRetries);
    this.lateSeq = late;
  }

  /** The engine restarted: its entries are stale; pick up its new buffer from 0. */
  private restart(): void {
    this.sink.drop("restart");
    this.resyncing = false;
    // queued batches may belong to either process; the replay from 0 brings the new one's again
    this.forget();
    if (this.hasReplay) this.beginReplay("initial", 0);
    else this.phase = "live";
  }

  private forget(): void {
    this.last = null;
    this.verifyRetries = 0;
    this.short.reset();
    this.bad.reset();
    this.recent.clear();
    this.pending.length = 0;
  }

  /** Entries a lost batch may have made false: drop them and rebuild from what follows. */
  private unrecoverable(): void {
    this.sink.drop("gap");
    this.resyncing = true;
    this.last = null;
  }

  private applyMsg(seq: number, payload: Uint8Array): void {
    if (this.sink.apply(seq, payload) === false) {
      this.undecodable(seq);
      return;
    }
    this.last = seq;
    this.recent.add(seq, payload);
    if (seq === this.bad.seq) {
      this.bad.reset();
      this.sink.repaired?.(seq);
    }
  }

  /**
   * `seq` did not decode and stays unapplied (`last` unchanged): ask the engine for it again, from
   * the running replay's end or right away; past the bound (or without a replay) it is lost.
   */
  private undecodable(seq: number): void {
    if (this.bad.hit(seq) > this.maxRepairs || !this.hasReplay) {
      this.lostBad();
      return;
    }
    // the rest of a running answer would show a hole at seq: stop using it
    if (this.phase === "replaying") this.replayCut = true;
    else this.repair();
  }

  private repair(): void {
    this.beginReplay("gap", this.bad.seq, this.bad.count - 1);
  }

  /** No good copy of the bad seq: what it changed is unknown, so drop and rebuild from what follows. */
  private lostBad(): void {
    const seq = this.bad.seq;
    this.bad.reset();
    this.sink.decodeLost?.(seq);
    this.unrecoverable();
  }
}
