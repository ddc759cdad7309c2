/**
 * Corruption resilience of one stream. Flipped bytes on the wire can also make frames that decode
 * as valid but wrong batches, which nothing in the protocol detects. So a stream that shows signs
 * of a garbling transport (a frame without valid framing, a batch that needed a good copy, a seq
 * the engine never published, a ZMTP protocol error) is *suspect*: its claims do not count for
 * routing (its state is `suspect`, not `live`). Once it has been clean for `cleanMs` it is rebuilt
 * from the engine's replay buffer (drop + replay from the oldest buffered batch), which wipes
 * whatever garbage was applied during the window; a rebuild that finishes without a new sign
 * clears the suspicion. The hot path only reads a boolean.
 */
export type SuspectCause = "framing" | "repaired" | "bogus_seq" | "protocol_error";

export interface SuspicionHooks {
  /** drop the stream and replay from the engine's oldest batch; false: not now (busy, down) */
  rebuild(): boolean;
  /** the tracker is live with nothing pending (a rebuild has completed) */
  settled(): boolean;
  changed(): void;
  suspected(cause: SuspectCause, first: boolean): void;
  rebuilding(): void;
  trusted(): void;
}

export class Suspicion {
  private suspect = false;
  private lastFaultAt = 0;
  private rebuildAt = 0;
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
    this.lastFaultAt = Date.now();
    this.hooks.suspected(cause, first);
    this.schedule(this.cleanMs);
    if (first) this.hooks.changed();
  }

  /** Called after every tracker step: a rebuild that completed cleanly ends the suspicion. */
  check(): void {
    if (!this.suspect || this.rebuildAt === 0 || this.lastFaultAt >= this.rebuildAt) return;
    if (!this.hooks.settled()) return;
    this.suspect = false;
    this.rebuildAt = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.hooks.trusted();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
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
    const quiet = Date.now() - this.lastFaultAt;
    if (quiet < this.cleanMs) {
      this.schedule(this.cleanMs - quiet);
    } else if (this.rebuildAt > this.lastFaultAt && !this.hooks.settled()) {
      // a rebuild started after the last sign: let it finish (check() ends the suspicion)
      this.schedule(this.cleanMs);
    } else if (!this.hooks.rebuild()) {
      // busy (a replay runs) or down: try again soon
      this.schedule(Math.max(50, this.cleanMs / 4));
    } else {
      this.rebuildAt = Date.now();
      this.hooks.rebuilding();
      this.schedule(this.cleanMs);
    }
  }
}
