/**
 * What the sequence tracker (seq-tracker.ts) reports to and is configured with, and the cheap
 * payload fingerprint it remembers recent batches by.
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
  /** An audit's replayed batch at a seq already applied (compared, never applied). */
  audited?(seq: number, payload: Uint8Array): void;
  /**
   * An audit replay ended: `complete` false when it failed or was cut short; `firstSeq` is the
   * first seq the engine replayed (null: none), beyond the asked one when its buffer no longer
   * reaches back that far.
   */
  auditEnd?(complete: boolean, firstSeq: number | null): void;
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

/** How many times in a row one seq has failed (a gap replay fell short of it, it did not decode). */
export class SeqStrikes {
  seq = -1;
  count = 0;
  /** counts a strike against `seq` (a new seq starts over at 1); returns the count */
  hit(seq: number): number {
    if (seq === this.seq) this.count++;
    else {
      this.seq = seq;
      this.count = 1;
    }
    return this.count;
  }
  reset(): void {
    this.seq = -1;
    this.count = 0;
  }
}

/** The last `size` applied batches by seq (a ring indexed by seq % size): seq, fingerprint, length. */
export class RecentBatches {
  private readonly seqs: Float64Array;
  private readonly fps: Int32Array;
  private readonly lens: Int32Array;

  constructor(size: number) {
    const n = Math.max(2, size);
    this.seqs = new Float64Array(n).fill(-1);
    this.fps = new Int32Array(n);
    this.lens = new Int32Array(n);
  }

  add(seq: number, payload: Uint8Array): void {
    const i = seq % this.seqs.length;
    this.seqs[i] = seq;
    this.fps[i] = fingerprint(payload);
    this.lens[i] = payload.length;
  }

  /** Remember a batch by its fingerprint alone (one a peer replica applied: a catch-up). */
  addFingerprint(seq: number, fp: number, len: number): void {
    const i = seq % this.seqs.length;
    this.seqs[i] = seq;
    this.fps[i] = fp;
    this.lens[i] = len;
  }

  /** The fingerprint and length remembered for `seq`, or null. */
  fingerprintOf(seq: number): { fp: number; len: number } | null {
    const i = seq % this.seqs.length;
    return this.seqs[i] === seq ? { fp: this.fps[i], len: this.lens[i] } : null;
  }

  has(seq: number): boolean {
    return this.seqs[seq % this.seqs.length] === seq;
  }

  /** true: seen with the same payload; false: seen with another payload; null: not remembered. */
  matches(seq: number, payload: Uint8Array): boolean | null {
    const i = seq % this.seqs.length;
    if (this.seqs[i] !== seq) return null;
    return this.lens[i] === payload.length && this.fps[i] === fingerprint(payload);
  }

  clear(): void {
    this.seqs.fill(-1);
  }
}
