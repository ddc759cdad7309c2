/**
 * The sequence logic of one engine event stream, free of sockets and timers: a pure state
 * machine fed with live messages, replay messages and replay outcomes, which tells its sink
 * what to apply, when to drop the stream's entries and when to ask for a replay.
 *
 * Rules (docs/events.md):
 * - Live seq == last + 1 is applied. A gap (seq > last + 1) asks for a replay from last + 1;
 *   live messages that arrive meanwhile wait in a bounded queue and are merged after the replay
 *   without duplicates. Without a replay endpoint a gap is unrecoverable.
 * - A replay that can't cover the gap (its first seq is beyond the requested one, a hole inside
 *   it, a failure or timeout) drops the stream's entries and rebuilds from what the stream still
 *   delivers (state `resyncing` until the stream is contiguous and nothing waits).
 * - A seq <= last whose payload equals the one seen for that seq is a duplicate (ignored). Any
 *   other backward seq (another payload at a remembered seq, or one too old to be remembered) is
 *   verified: a replay from `last` that still shows our last batch proves the same process (the
 *   message was garbage or stale: ignored); anything else means the engine restarted: drop and
 *   start over (replay from 0).
 * - A gap replay that ends short of the queued live batch it was asked for (a corrupted seq, an
 *   engine that jumped) is retried (`attempt` > 0 lets the caller back off); after
 *   `maxGapRetries` such replays that batch is bogus: reported, discarded, and the queue goes on.
 * - A batch whose payload does not decode is asked again from the replay endpoint (up to
 *   `maxRepairs` times) and applied in order from a good copy; without one the stream's entries
 *   are dropped and rebuilt from what follows, like an unrecoverable gap.
 * - After a reconnect the tracker asks for a replay from `last` and checks that the engine still
 *   has the same batch there: otherwise it restarted while we were away.
 */

export type TrackerState = "live" | "replaying" | "resyncing";

export type DropReason = "restart" | "gap" | "rebuild";

export interface SeqSink {
  /** Apply a message, in seq order; false: its payload does not decode (nothing applied). */
  apply(seq: number, payload: Uint8Array): boolean;
  /** Forget every entry of the stream. */
  drop(reason: DropReason): void;
  /**
   * Ask the engine for its buffered batches with seq >= fromSeq (one replay at a time). `attempt`
   * counts the replays already asked for the same queued batch that they did not reach.
   */
  requestReplay(fromSeq: number, attempt: number): void;
  /** A gap was detected between two seqs (inclusive range of missing seqs). */
  gap?(from: number, to: number, recoverable: boolean): void;
  duplicate?(seq: number): void;
  /**
   * Whether a payload decodes (checked only on a verify's answer at `last` that differs from what
   * we applied: garbled in transit or another process's batch). Without it: it decodes.
   */
  decodes?(seq: number, payload: Uint8Array): boolean;
  /** A late backward seq turned out stale: the engine still holds our last batch. */
  stale?(seq: number): void;
  /** An undecodable batch with no good copy to be had: the stream is dropped and rebuilt. */
  decodeLost?(seq: number): void;
  /** A batch that failed to decode was applied from a good copy. */
  repaired?(seq: number): void;
  /** A live seq beyond everything the engine's buffer holds, discarded after the retries. */
  bogus?(seq: number): void;
  /** A live message could not be queued during a replay (queue full); it shows up as a gap later. */
  overflow?(seq: number): void;
}

export interface SeqTrackerOptions {
  /** The stream has a replay endpoint. */
  replay: boolean;
  /** Live messages queued while a replay runs. */
  maxPending?: number;
  /** Recent payload fingerprints kept to tell duplicates from restarts. */
  recentSize?: number;
  /** Gap replays that end short of the same queued batch before it counts as bogus. */
  maxGapRetries?: number;
  /** Replays asked for one undecodable batch before it counts as lost. */
  maxRepairs?: number;
  /** Verify replays retried after a garbled answer before the engine counts as restarted. */
  maxVerifyRetries?: number;
}

type ReplayKind = "initial" | "gap" | "verify" | "probe";

interface Msg {
  seq: number;
  payload: Uint8Array;
}

/**
 * A cheap identity of a payload: its length and an FNV-1a hash of its first and last 32 bytes
 * (the batch's float64 timestamp sits in the first bytes). O(1) per message, and no payload is
 * kept alive: two different batches at the same seq differ here in practice.
 */
export function fingerprint(p: Uint8Array): number {
  let h = 0x811c9dc5 ^ p.length;
  const n = p.length;
  const head = Math.min(n, 32);
  for (let i = 0; i < head; i++) h = Math.imul(h ^ p[i], 0x01000193);
  for (let i = Math.max(n - 32, head); i < n; i++) h = Math.imul(h ^ p[i], 0x01000193);
  return h | 0;
}

export class SeqTracker {
  /** last applied seq, null before the first batch (or after a drop). */
  last: number | null = null;
  private phase: "idle" | "live" | "replaying" = "idle";
  private resyncing = false;
  private readonly hasReplay: boolean;
  private readonly maxPending: number;
  private readonly pending: Msg[] = [];
  // ring of recently applied messages, indexed by seq % size
  private readonly recentSeq: Float64Array;
  private readonly recentFp: Int32Array;
  private readonly recentLen: Int32Array;
  // the running replay
  private replayKind: ReplayKind = "initial";
  private replayFrom = 0;
  private replayFirst = true;
  private replayAbandon = false;
  private replayIgnore = false;
  /** the late backward seq a running verify replay was started for (null: a reconnect check) */
  private lateSeq: number | null = null;
  /** the queued live seq the gap replays did not reach, and how many did not */
  private shortSeq = -1;
  private shortCount = 0;
  private readonly maxGapRetries: number;
  /** the undecodable seq being asked again, how often, and whether the running replay stops there */
  private badSeq = -1;
  private badCount = 0;
  private replayCut = false;
  private readonly maxRepairs: number;
  /** the running replay's answer had a broken frame, and a verify answer that proved nothing */
  private replayGarbled = false;
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
    const n = Math.max(2, opts.recentSize ?? 64);
    this.recentSeq = new Float64Array(n).fill(-1);
    this.recentFp = new Int32Array(n);
    this.recentLen = new Int32Array(n);
  }

  /** last applied seq for status reports (null before the first batch). */
  lastSeq(): number | null {
    return this.last === null || this.last < 0 ? null : this.last;
  }

  state(): TrackerState {
    if (this.resyncing) return "resyncing";
    // an idle probe keeps the stream live unless it finds something wrong
    return this.phase === "replaying" && this.replayKind !== "probe" ? "replaying" : "live";
  }

  replaying(): boolean {
    return this.phase === "replaying";
  }

  pendingCount(): number {
    return this.pending.length;
  }

  /**
   * First connection. With a replay endpoint, asks for replay from `fromSeq` (default 0: pick up
   * whatever the engine's buffer still holds); batches before the first replayed one are not a
   * gap unless `fromSeq` was given explicitly. `initialReplay` false (and no fromSeq) starts
   * with the live stream; later gaps are still filled through the replay endpoint.
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

  /**
   * Forget everything and take the engine's replay buffer again from its oldest batch (a stream
   * that may hold garbage). Only when live and idle; without a replay endpoint the stream
   * rebuilds from the live batches that follow. Returns whether it started.
   */
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
    else if (this.remembers(last)) this.beginReplay("verify", last);
    // nothing applied at `last` yet (a start from --from-seq): resume the pick-up
    else this.beginReplay("gap", last + 1);
  }

  /**
   * Ask the engine whether it published anything after our last batch (a lost final batch shows
   * no gap until the next one arrives). Only when live, idle and with a replay endpoint; returns
   * whether a probe replay was started.
   */
  probe(): boolean {
    if (!this.hasReplay || this.phase !== "live" || this.last === null || this.pending.length > 0)
      return false;
    this.beginReplay("probe", this.last + 1);
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
    if (this.replayFirst) {
      this.replayFirst = false;
      if (this.replayKind === "verify") {
        const last = this.last as number;
        if (seq === last && this.recentMatches(seq, payload) === true) {
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
        if (this.badSeq === this.replayFrom) this.lostBad();
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
    if (this.replayIgnore) {
      // its answer no longer mattered; check the (re)connected engine instead
      this.onReplayEnd();
      return;
    }
    if (this.replayCut || (this.badSeq >= 0 && this.replayFrom === this.badSeq)) {
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
    // an initial pick-up or an idle probe that fails loses nothing we had; any other replay
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
      const m = this.recentMatches(seq, payload);
      if (m === true || (m === null && fromQueue)) {
        this.sink.duplicate?.(seq);
        return true;
      }
      if (this.hasReplay && this.remembers(last)) {
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
      const retry = seq === this.shortSeq ? this.shortCount : 0;
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
      this.shortSeq = -1;
      this.shortCount = 0;
      return;
    }
    if (head.seq === this.shortSeq) this.shortCount++;
    else {
      this.shortSeq = head.seq;
      this.shortCount = 1;
    }
    if (this.shortCount < this.maxGapRetries) return;
    this.pending.shift();
    this.shortSeq = -1;
    this.shortCount = 0;
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
    this.shortSeq = -1;
    this.shortCount = 0;
    this.badSeq = -1;
    this.badCount = 0;
    this.recentSeq.fill(-1);
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
    const i = seq % this.recentSeq.length;
    this.recentSeq[i] = seq;
    this.recentFp[i] = fingerprint(payload);
    this.recentLen[i] = payload.length;
    if (seq === this.badSeq) {
      this.badSeq = -1;
      this.badCount = 0;
      this.sink.repaired?.(seq);
    }
  }

  /**
   * `seq` did not decode and stays unapplied (`last` unchanged): ask the engine for it again, from
   * the running replay's end or right away; past the bound (or without a replay) it is lost.
   */
  private undecodable(seq: number): void {
    if (seq === this.badSeq) this.badCount++;
    else {
      this.badSeq = seq;
      this.badCount = 1;
    }
    if (!this.hasReplay || this.badCount > this.maxRepairs) {
      this.lostBad();
      return;
    }
    // the rest of a running answer would show a hole at seq: stop using it
    if (this.phase === "replaying") this.replayCut = true;
    else this.repair();
  }

  private repair(): void {
    this.beginReplay("gap", this.badSeq, this.badCount - 1);
  }

  /** No good copy of badSeq: what it changed is unknown, so drop and rebuild from what follows. */
  private lostBad(): void {
    const seq = this.badSeq;
    this.badSeq = -1;
    this.badCount = 0;
    this.sink.decodeLost?.(seq);
    this.unrecoverable();
  }

  private remembers(seq: number): boolean {
    return this.recentSeq[seq % this.recentSeq.length] === seq;
  }

  /** true: seen with the same payload; false: seen with another payload; null: not remembered. */
  private recentMatches(seq: number, payload: Uint8Array): boolean | null {
    const i = seq % this.recentSeq.length;
    if (this.recentSeq[i] !== seq) return null;
    return this.recentLen[i] === payload.length && this.recentFp[i] === fingerprint(payload);
  }
}
