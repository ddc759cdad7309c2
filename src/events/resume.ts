/**
 * Resuming a stream from a point another gateway replica reached (src/cluster/ catch-up): the
 * index already holds the stream up to `point.seq`, and the tracker starts as if it had applied
 * that batch and just reconnected, so its first replay verifies the batch at the point with the
 * engine (same process → go on from there; another batch or none → restart, entries dropped;
 * the buffer past the point → unrecoverable gap, rebuilt).
 */
import type { SeqTracker } from "./seq-tracker.ts";

/** A stream position another replica can verify against the engine: seq and its batch's fingerprint. */
export interface ResumePoint {
  seq: number;
  fp: number;
  len: number;
}

/** First connection of a stream loaded up to `point`. */
export function resumeTracker(t: SeqTracker, point: ResumePoint): void {
  t.start(undefined, false);
  t.last = point.seq;
  t.recent.addFingerprint(point.seq, point.fp, point.len);
  t.reconnected();
}

/** Where a peer could resume the stream from: live, idle, with its last batch remembered. */
export function resumePointOf(t: SeqTracker): ResumePoint | null {
  const last = t.last;
  if (last === null || last < 0 || t.state() !== "live" || t.replaying()) return null;
  const f = t.recent.fingerprintOf(last);
  return f === null ? null : { seq: last, fp: f.fp, len: f.len };
}
