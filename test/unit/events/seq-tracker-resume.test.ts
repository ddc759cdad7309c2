import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { resumePointOf, resumeTracker } from "../../../src/events/resume.ts";
import { type DropReason, fingerprint, type SeqSink, SeqTracker } from "../../../src/events/seq-tracker.ts";

/** A stream loaded from a peer's snapshot resumes only from the same engine process (catch-up). */
const batch = (epoch: number, seq: number) => Uint8Array.from([epoch, seq, 7, 7, 7]);

class Sink implements SeqSink {
  applied: number[] = [];
  drops: DropReason[] = [];
  replays: number[] = [];
  apply(seq: number): boolean {
    this.applied.push(seq);
    return true;
  }
  drop(reason: DropReason): void {
    this.drops.push(reason);
  }
  requestReplay(fromSeq: number): void {
    this.replays.push(fromSeq);
  }
}

const point = (epoch: number, seq: number) => {
  const p = batch(epoch, seq);
  return { seq, fp: fingerprint(p), len: p.length };
};

describe("SeqTracker.resume: a peer's point verified against the engine's buffer", () => {
  it("same engine: the batch at the point matches, what follows is applied, nothing dropped", () => {
    const s = new Sink();
    const t = new SeqTracker(s, { replay: true });
    resumeTracker(t, point(1, 50));
    assert.deepEqual(s.replays, [50]);
    for (let q = 50; q <= 53; q++) t.onReplayMessage(q, batch(1, q));
    t.onReplayEnd();
    assert.deepEqual(s.applied, [51, 52, 53]);
    assert.deepEqual(s.drops, []);
    assert.equal(t.state(), "live");
    t.onLive(54, batch(1, 54));
    assert.deepEqual(s.applied, [51, 52, 53, 54]);
    assert.deepEqual(resumePointOf(t), point(1, 54));
  });

  it("engine restarted (another batch at that seq): the loaded entries are dropped", () => {
    const s = new Sink();
    const t = new SeqTracker(s, { replay: true });
    resumeTracker(t, point(1, 50));
    t.onReplayMessage(50, batch(2, 50));
    t.onReplayEnd();
    assert.deepEqual(s.drops, ["restart"]);
    assert.equal(s.replays.at(-1), 0);
  });

  it("engine restarted (nothing at or after the point): dropped", () => {
    const s = new Sink();
    const t = new SeqTracker(s, { replay: true });
    resumeTracker(t, point(1, 50));
    t.onReplayEnd();
    assert.deepEqual(s.drops, ["restart"]);
  });

  it("buffer rolled past the point: an unrecoverable gap, dropped and rebuilt", () => {
    const s = new Sink();
    const t = new SeqTracker(s, { replay: true });
    resumeTracker(t, point(1, 50));
    t.onReplayMessage(60, batch(1, 60));
    t.onReplayEnd();
    assert.deepEqual(s.drops, ["gap"]);
    assert.deepEqual(s.applied, [60]);
  });
});
