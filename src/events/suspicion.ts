/**
 * Corruption resilience of one stream. Flipped bytes on the wire can also make frames that decode
 * as valid but wrong batches, which nothing in the protocol detects. So a stream that shows signs
 * of a garbling transport (a frame without valid framing, a batch that needed a good copy, a seq
 * the engine never published, a ZMTP protocol error) is *suspect*: its claims do not count for
 * routing (its state is `suspect`, not `live`), and every batch it applies is logged with a strong
 * identity (suspect-log.ts).
 *
 * Once it has been clean for `cleanMs` it is audited: the engine's replay buffer is asked from the
 * first unconfirmed suspect seq and each replayed batch is compared with what was applied. All
 * equal: the suspicion ends with nothing dropped (`verified`). A decodable other batch, or a buffer
 * that no longer reaches back: drop and rebuild from the engine's buffer (which wipes whatever
 * garbage was applied); a rebuild that finishes without a new sign ends the suspicion. An audit
 * that proves nothing (failed, its answer garbled too) is asked again. A stream that stays
 * suspect is audited as it goes (`due()`), so the window never outgrows the engine's buffer.
 * Not suspect, the hot path only reads a boolean.
 */
export type SuspectCause = "framing" | "repaired" | "bogus_seq" | "protocol_error";

/** How an audit ended: all compared equal, something differs (or can't be compared), or neither. */
export type AuditOutcome = "match" | "mismatch" | "inconclusive";

export interface SuspicionHooks {
  /**
   * Start an audit replay. busy: not now (a replay runs, down); empty: nothing applied while
   * suspect; lost: the log no longer covers the suspect window (it overflowed).
   */
  audit(): "started" | "busy" | "empty" | "lost";
  /** whether every batch applied while suspect, up to the audit's start, is confirmed */
  confirmed(): boolean;
  /** drop the stream and replay from the engine's oldest batch; false: not now (busy, down) */
  rebuild(): boolean;
  /** the tracker is live with nothing pending (a rebuild has completed) */
  settled(): boolean;
  changed(): void;
  suspected(cause: SuspectCause, first: boolean): void;
  rebuilding(): void;
  /** the suspicion ended after a clean rebuild */
  trusted(): void;
  /** the suspicion ended: every batch applied while suspect matched the engine's */
  verified(): void;
}

export class Suspicion {
  private suspect = false;
  private lastFaultAt = 0;
  private rebuildAt = 0;
  private auditAt = 0;
  private auditing = false;
  private mustRebuild = false;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private readonly cleanMs: number,
    private readonly hooks: SuspicionHooks,
  ) {}

  isSuspect(): boolean {
    return this.suspect;
  }

  fault(cause: SuspectCause): void {
    if (this.closed) return;
    const first = !this.suspect;
    this.suspect = true;
    this.lastFaultAt = performance.now();
    this.hooks.suspected(cause, first);
    this.schedule(this.cleanMs);
    if (first) this.hooks.changed();
  }

  /** Called after every tracker step: a rebuild that completed cleanly ends the suspicion. */
  check(): void {
    if (!this.suspect || this.rebuildAt === 0 || this.lastFaultAt >= this.rebuildAt) return;
    if (this.auditing || !this.hooks.settled()) return;
    this.clear();
    this.hooks.trusted();
  }

  /** The suspect window grew large: audit what it has so far, clean or not. */
  due(): void {
    if (!this.suspect || this.auditing || this.mustRebuild || this.closed) return;
    if (this.rebuildAt > this.lastFaultAt) return;
    this.startAudit(false);
  }

  /** Returns whether an audit started; ends the suspicion when there is nothing to audit. */
  private startAudit(clean: boolean): boolean {
    const r = this.hooks.audit();
    if (r === "started") {
      this.auditing = true;
      this.auditAt = performance.now();
      return true;
    }
    if (r === "lost") {
      this.mustRebuild = true;
      this.reschedule(0);
    } else if (r === "empty" && clean) {
      this.clear();
      this.hooks.verified();
    }
    return false;
  }

  /** An audit replay ended. */
  auditDone(outcome: AuditOutcome): void {
    if (!this.auditing) return;
    this.auditing = false;
    if (!this.suspect || this.closed) return;
    if (outcome === "mismatch") {
      this.mustRebuild = true;
      this.reschedule(0);
    } else if (outcome === "match" && this.lastFaultAt < this.auditAt && this.hooks.confirmed()) {
      this.clear();
      this.hooks.verified();
    } else {
      // a sign during the audit, or an answer that proved nothing (some copies garbled too)
      this.reschedule(Math.max(50, this.cleanMs / 4));
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private clear(): void {
    this.suspect = false;
    this.rebuildAt = 0;
    this.mustRebuild = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private reschedule(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.schedule(ms);
  }

  private schedule(ms: number): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.tick();
    }, ms);
    this.timer.unref();
  }

  private tick(): void {
    if (!this.suspect || this.closed) return;
    const quiet = performance.now() - this.lastFaultAt;
    if (this.mustRebuild) {
      if (this.auditing) this.schedule(50);
      else if (this.hooks.rebuild()) {
        this.mustRebuild = false;
        this.rebuildAt = performance.now();
        this.hooks.rebuilding();
        this.schedule(this.cleanMs);
      } else this.schedule(Math.max(50, this.cleanMs / 4));
    } else if (quiet < this.cleanMs) {
      this.schedule(this.cleanMs - quiet);
    } else if (this.auditing || (this.rebuildAt > this.lastFaultAt && !this.hooks.settled())) {
      // an audit runs, or a rebuild started after the last sign: let it finish
      this.schedule(this.cleanMs);
    } else if (this.startAudit(true)) {
      this.schedule(this.cleanMs);
    } else {
      // busy (a replay runs) or down: try again soon (a no-op once cleared or rebuilding)
      this.schedule(Math.max(50, this.cleanMs / 4));
    }
  }
}
