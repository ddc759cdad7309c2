/**
 * What a suspect stream applied, kept to be checked against the engine's replay buffer instead of
 * rebuilding the stream (suspicion.ts). While the stream is suspect every applied batch is logged
 * with a strong identity of its payload bytes as applied (after a repair, the good copy's): its
 * length and two 32-bit hashes over every byte, so a flipped byte anywhere changes it (FNV-1a is a
 * bijection per byte step: one changed byte always changes its lane). An audit replays from the
 * first unconfirmed seq and confirms entry by entry; confirmed entries leave the log.
 *
 * Not suspect, the log only keeps references to the last few applied payloads (a store per
 * batch, no hashing): a garbled batch applied just before the first sign is logged too.
 */

/** How a replayed batch compares with what was applied at its seq. */
export type AuditVerdict = "match" | "mismatch" | "garbled" | "unknown";

let idA = 0;
let idB = 0;

/** Sets idA/idB to the payload's identity (two hash lanes over every byte). */
function identify(p: Uint8Array): void {
  let a = 0x811c9dc5 ^ p.length;
  let b = 0x9747b28c ^ p.length;
  for (let i = 0; i < p.length; i++) {
    const x = p[i];
    a = Math.imul(a ^ x, 0x01000193);
    b = Math.imul(b ^ x, 0x5bd1e995);
    b ^= b >>> 15;
  }
  idA = a | 0;
  idB = b | 0;
}

/** The strong identity of a payload as a string (tests, logs). */
export function payloadIdentity(p: Uint8Array): string {
  identify(p);
  return `${p.length}:${(idA >>> 0).toString(16)}:${(idB >>> 0).toString(16)}`;
}

export class SuspectLog {
  private active = false;
  private seqs: Float64Array | null = null;
  private lanesA: Int32Array | null = null;
  private lanesB: Int32Array | null = null;
  private lens: Int32Array | null = null;
  private ok: Uint8Array | null = null;
  private head = 0;
  private count = 0;
  private confirmed = 0;
  /** unconfirmed entries were pushed out: an audit can no longer cover the suspect window */
  overflowed = false;
  /** the first seq applied after the sign (entries before it were applied before any) */
  private suspectFrom = -1;
  private addingRefs = false;
  // the last few applied payloads while not suspect, oldest first from refPos
  private readonly refs: Array<Uint8Array | null>;
  private readonly refSeqs: Float64Array;
  private refPos = 0;

  constructor(
    private readonly capacity = 20_000,
    before = 8,
  ) {
    this.refs = new Array(Math.max(0, before)).fill(null);
    this.refSeqs = new Float64Array(Math.max(0, before)).fill(-1);
  }

  /** Every applied batch, in seq order. */
  note(seq: number, payload: Uint8Array): void {
    if (this.active) {
      this.add(seq, payload);
      return;
    }
    const n = this.refs.length;
    if (n === 0) return;
    this.refs[this.refPos] = payload;
    this.refSeqs[this.refPos] = seq;
    this.refPos = (this.refPos + 1) % n;
  }

  /** The stream became suspect: log from the last batches applied before the sign on. */
  begin(): void {
    if (this.active) return;
    this.active = true;
    this.seqs = new Float64Array(this.capacity);
    this.lanesA = new Int32Array(this.capacity);
    this.lanesB = new Int32Array(this.capacity);
    this.lens = new Int32Array(this.capacity);
    this.ok = new Uint8Array(this.capacity);
    this.head = this.count = this.confirmed = 0;
    this.overflowed = false;
    this.suspectFrom = -1;
    // the contiguous run of remembered payloads that ends with the newest
    const n = this.refs.length;
    const run: number[] = [];
    for (let k = 1; k <= n; k++) {
      const i = (this.refPos - k + n) % n;
      const p = this.refs[i];
      if (p === null || (run.length > 0 && this.refSeqs[i] !== this.refSeqs[run[run.length - 1]] - 1)) break;
      run.push(i);
    }
    this.addingRefs = true;
    for (let k = run.length - 1; k >= 0; k--) this.add(this.refSeqs[run[k]], this.refs[run[k]] as Uint8Array);
    this.addingRefs = false;
    this.forgetRefs();
  }

  /** Suspicion cleared: free the log. */
  end(): void {
    this.active = false;
    this.seqs = this.lanesA = this.lanesB = this.lens = null;
    this.ok = null;
    this.head = this.count = this.confirmed = 0;
    this.overflowed = false;
    this.forgetRefs();
  }

  /** The stream's entries were dropped: nothing applied before counts any more. */
  reset(): void {
    this.head = this.count = this.confirmed = 0;
    this.overflowed = false;
    this.suspectFrom = -1;
    this.forgetRefs();
  }

  isActive(): boolean {
    return this.active;
  }

  /** Entries not confirmed by an audit yet. */
  unconfirmed(): number {
    return this.count - this.confirmed;
  }

  /** The seq an audit starts from (null: nothing to check). */
  firstUnconfirmed(): number | null {
    this.prune();
    return this.count === 0 || this.seqs === null ? null : this.seqs[this.head];
  }

  /**
   * An audit's answer started at `first` (null: nothing replayed). Entries below it applied before
   * the sign are waived (the engine's buffer moved past them; they were no more suspect than any
   * batch); false: an entry applied while suspect is below it and can never be checked.
   */
  reachedBack(first: number | null): boolean {
    const seqs = this.seqs;
    if (seqs === null) return true;
    for (let k = 0; k < this.count; k++) {
      const i = (this.head + k) % this.capacity;
      if (first !== null && seqs[i] >= first) break;
      if ((this.ok as Uint8Array)[i] === 1) continue;
      if (this.suspectFrom >= 0 && seqs[i] >= this.suspectFrom) return false;
      (this.ok as Uint8Array)[i] = 1;
      this.confirmed++;
    }
    this.prune();
    return true;
  }

  /** Whether every logged entry up to `seq` is confirmed. */
  confirmedThrough(seq: number): boolean {
    const first = this.firstUnconfirmed();
    return first === null || first > seq;
  }

  /** Compare a replayed batch with the one applied at its seq (`decodes` asked on a difference). */
  check(seq: number, payload: Uint8Array, decodes: () => boolean): AuditVerdict {
    const i = this.slot(seq);
    if (i < 0 || (this.ok as Uint8Array)[i] === 1) return "unknown";
    identify(payload);
    const same =
      (this.lens as Int32Array)[i] === payload.length &&
      (this.lanesA as Int32Array)[i] === idA &&
      (this.lanesB as Int32Array)[i] === idB;
    if (same) {
      (this.ok as Uint8Array)[i] = 1;
      this.confirmed++;
      return "match";
    }
    // an engine copy garbled in transit proves nothing either way; a decodable other batch does
    return decodes() ? "mismatch" : "garbled";
  }

  private slot(seq: number): number {
    if (this.count === 0 || this.seqs === null) return -1;
    const off = seq - this.seqs[this.head];
    if (off < 0 || off >= this.count) return -1;
    const i = (this.head + off) % this.capacity;
    return this.seqs[i] === seq ? i : -1;
  }

  private add(seq: number, payload: Uint8Array): void {
    const seqs = this.seqs as Float64Array;
    // entries stay contiguous (a drop resets the log): anything else starts it over
    if (this.count > 0 && seq !== seqs[(this.head + this.count - 1) % this.capacity] + 1) {
      this.overflowed = this.overflowed || this.unconfirmed() > 0;
      this.head = this.count = this.confirmed = 0;
    }
    if (this.count === this.capacity) {
      this.prune();
      if (this.count === this.capacity) {
        this.overflowed = true;
        this.dropHead();
      }
    }
    if (!this.addingRefs && this.suspectFrom < 0) this.suspectFrom = seq;
    const i = (this.head + this.count) % this.capacity;
    identify(payload);
    seqs[i] = seq;
    (this.lanesA as Int32Array)[i] = idA;
    (this.lanesB as Int32Array)[i] = idB;
    (this.lens as Int32Array)[i] = payload.length;
    (this.ok as Uint8Array)[i] = 0;
    this.count++;
  }

  /** Confirmed entries at the head leave the log. */
  private prune(): void {
    while (this.count > 0 && (this.ok as Uint8Array)[this.head] === 1) this.dropHead();
  }

  private dropHead(): void {
    if ((this.ok as Uint8Array)[this.head] === 1) this.confirmed--;
    this.head = (this.head + 1) % this.capacity;
    this.count--;
  }

  private forgetRefs(): void {
    this.refs.fill(null);
    this.refSeqs.fill(-1);
    this.refPos = 0;
  }
}
