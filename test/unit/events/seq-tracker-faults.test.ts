/**
 * The tracker's answers to the faults of issue 13 (late batches the ring forgot, seqs beyond the
 * engine's newest, undecodable batches, rebuilds), driven step by step through its sink.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type DropReason, type SeqSink, SeqTracker } from "../../../src/events/seq-tracker.ts";

/** A payload naming its engine process (epoch) and seq; `bad` ones fail to decode. */
function pl(epoch: number, seq: number, bad = false): Uint8Array {
  const b = new Uint8Array(9);
  const v = new DataView(b.buffer);
  v.setUint32(0, epoch);
  v.setUint32(4, seq);
  b[8] = bad ? 1 : 0;
  return b;
}

class Sink {
  applied: string[] = [];
  drops: DropReason[] = [];
  replays: Array<{ from: number; attempt: number }> = [];
  stale: number[] = [];
  bogus: number[] = [];
  lost: number[] = [];
  apply(seq: number, p: Uint8Array): boolean {
    if (p[8] === 1) return false;
    const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
    assert.equal(v.getUint32(4), seq);
    this.applied.push(`${v.getUint32(0)}:${seq}`);
    return true;
  }
  drop(reason: DropReason): void {
    this.drops.push(reason);
    this.applied = [];
  }
  requestReplay(from: number, attempt = 0): void {
    this.replays.push({ from, attempt });
  }
}

function sinkOf(s: Sink): SeqSink {
  return {
    apply: (seq, p) => s.apply(seq, p),
    drop: (r) => s.drop(r),
    requestReplay: (f, a) => s.requestReplay(f, a),
    stale: (seq) => s.stale.push(seq),
    bogus: (seq) => s.bogus.push(seq),
    decodeLost: (seq) => s.lost.push(seq),
    decodes: (_seq, p) => p.length === 9 && p[8] === 0,
  };
}

/** Answer the last replay request from `buffer` (seq -> payload). */
function answer(t: SeqTracker, s: Sink, buffer: Map<number, Uint8Array>): void {
  const from = s.replays[s.replays.length - 1].from;
  for (const seq of [...buffer.keys()].sort((a, b) => a - b))
    if (seq >= from) t.onReplayMessage(seq, buffer.get(seq) as Uint8Array);
  t.onReplayEnd();
}

function liveTracker(n: number): { t: SeqTracker; s: Sink; buffer: Map<number, Uint8Array> } {
  const s = new Sink();
  const t = new SeqTracker(sinkOf(s), { replay: true, recentSize: 64 });
  const buffer = new Map<number, Uint8Array>();
  for (let i = 0; i < n; i++) buffer.set(i, pl(0, i));
  t.start();
  answer(t, s, buffer);
  assert.equal(t.state(), "live");
  assert.equal(t.last, n - 1);
  return { t, s, buffer };
}

describe("SeqTracker: late batches the ring no longer remembers", () => {
  it("a late copy of an old batch is verified stale: nothing is dropped", () => {
    const { t, s, buffer } = liveTracker(200);
    t.onLive(10, pl(0, 10)); // 190 batches later: out of the 64-entry ring
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.replays.at(-1), { from: 199, attempt: 0 }, "a verify replay from last");
    t.onLive(200, pl(0, 200)); // queued meanwhile
    buffer.set(200, pl(0, 200));
    answer(t, s, buffer);
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.stale, [10]);
    assert.equal(s.applied.length, 201);
    assert.equal(s.applied.at(-1), "0:200");
    assert.equal(t.state(), "live");
  });

  it("an unremembered backward seq from a new process is still a restart", () => {
    const { t, s } = liveTracker(200);
    // the engine restarted and got to seq 10 before we heard from it
    const fresh = new Map<number, Uint8Array>();
    for (let i = 0; i <= 10; i++) fresh.set(i, pl(1, i));
    t.onLive(10, pl(1, 10));
    answer(t, s, fresh); // from 199: the new process has nothing there
    assert.deepEqual(s.drops, ["restart"]);
    answer(t, s, fresh); // the pick-up from 0
    assert.deepEqual(
      s.applied,
      [...fresh.keys()].map((i) => `1:${i}`),
    );
    assert.deepEqual(s.stale, []);
  });

  it("a remembered seq with another payload from a new process is a restart, after asking", () => {
    const { t, s } = liveTracker(20);
    const before = s.replays.length;
    const fresh = new Map<number, Uint8Array>();
    for (let i = 0; i <= 19; i++) fresh.set(i, pl(1, i));
    t.onLive(15, pl(1, 15));
    assert.deepEqual(s.drops, [], "a remembered seq is verified first");
    assert.deepEqual(s.replays.slice(before), [{ from: 19, attempt: 0 }]);
    answer(t, s, fresh); // the new process has another batch at 19
    assert.deepEqual(s.drops, ["restart"]);
    assert.deepEqual(s.replays.at(-1), { from: 0, attempt: 0 });
  });
});

describe("SeqTracker: garbage at an applied seq (fuzz findings)", () => {
  it("garbage at a recently applied seq is verified and ignored, not taken for a restart", () => {
    const { t, s, buffer } = liveTracker(101);
    t.onLive(90, Uint8Array.of(0xc1));
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.replays.at(-1), { from: 100, attempt: 0 });
    t.onLive(101, pl(0, 101)); // waits for the verify
    buffer.set(101, pl(0, 101));
    answer(t, s, buffer);
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.stale, [90]);
    assert.equal(s.applied.length, 102);
    assert.equal(t.state(), "live");
  });

  it("a corrupted first answer to a verify is a failed verify, retried, not a restart", () => {
    const { t, s, buffer } = liveTracker(101);
    t.onLive(5, pl(0, 5)); // too old for the ring: verify from 100
    assert.deepEqual(s.replays.at(-1), { from: 100, attempt: 0 });
    t.onReplayMessage(100, Uint8Array.of(0xc1));
    t.onReplayEnd();
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.replays.at(-1), { from: 100, attempt: 1 }, "the verify is asked again");
    // an answer below the asked seq is mangled too, and so is an empty one with broken frames
    t.onReplayMessage(42, pl(0, 42));
    t.onReplayEnd();
    assert.deepEqual(s.replays.at(-1), { from: 100, attempt: 2 });
    t.onReplayGarbled();
    t.onReplayEnd();
    assert.deepEqual(s.replays.at(-1), { from: 100, attempt: 3 });
    answer(t, s, buffer);
    assert.deepEqual(s.drops, []);
    assert.deepEqual(s.stale, [5]);
    assert.equal(t.state(), "live");
    t.onLive(101, pl(0, 101));
    assert.equal(s.applied.at(-1), "0:101");
  });

  it("failed verifies are bounded; a decodable other batch at last is a restart at once", () => {
    const { t, s } = liveTracker(101);
    t.onLive(5, pl(0, 5));
    for (let i = 0; i < 10 && s.drops.length === 0; i++) {
      t.onReplayMessage(100, Uint8Array.of(0xc1));
      t.onReplayEnd();
    }
    assert.deepEqual(s.drops, ["restart"], "a stream that never verifies is not trusted");
    assert.equal(s.replays.filter((r) => r.from === 100).length, 4);
    const b = liveTracker(101);
    b.t.onLive(5, pl(0, 5));
    b.t.onReplayMessage(100, pl(1, 100)); // decodes: another process's batch
    b.t.onReplayEnd();
    assert.deepEqual(b.s.drops, ["restart"]);
  });

  it("a garbled live copy queued during a replay that brought the good one is no restart", () => {
    const { t, s, buffer } = liveTracker(3);
    for (let i = 3; i <= 6; i++) buffer.set(i, pl(0, i));
    t.onLive(5, pl(0, 5)); // gap 3..4: a replay from 3 runs
    t.onLive(6, pl(0, 6, true)); // garbled on the wire, queued; the engine's buffer has the good 6
    answer(t, s, buffer); // brings 3..6; the queued garbage at 6 is checked against the engine
    if (t.replaying()) answer(t, s, buffer);
    assert.deepEqual(s.drops, []);
    assert.deepEqual(
      s.applied.map((a) => a.split(":")[1]),
      ["0", "1", "2", "3", "4", "5", "6"],
    );
    assert.equal(t.state(), "live");
    t.onLive(7, pl(0, 7));
    assert.equal(s.applied.at(-1), "0:7");
  });
});

describe("SeqTracker: a live seq beyond the engine's newest", () => {
  it("retries the gap replay with rising attempts, then discards the seq and goes on", () => {
    const { t, s, buffer } = liveTracker(5);
    t.onLive(1_000_000, pl(0, 1_000_000));
    for (let i = 0; i < 10 && s.bogus.length === 0; i++) answer(t, s, buffer);
    assert.deepEqual(s.bogus, [1_000_000]);
    assert.deepEqual(
      s.replays.slice(1).map((r) => [r.from, r.attempt]),
      [
        [5, 0],
        [5, 1],
        [5, 2],
      ],
    );
    assert.equal(t.state(), "live");
    t.onLive(5, pl(0, 5));
    assert.equal(s.applied.at(-1), "0:5");
    assert.deepEqual(s.drops, []);
  });

  it("a gap replay that reaches the queued seq is no retry", () => {
    const { t, s, buffer } = liveTracker(5);
    buffer.set(5, pl(0, 5));
    buffer.set(6, pl(0, 6));
    t.onLive(6, pl(0, 6));
    answer(t, s, buffer);
    assert.deepEqual(s.bogus, []);
    assert.equal(t.last, 6);
    assert.equal(s.replays.length, 2);
  });
});

describe("SeqTracker: undecodable batches", () => {
  it("a live batch that does not decode is applied in order from the engine's good copy", () => {
    const { t, s, buffer } = liveTracker(3);
    buffer.set(3, pl(0, 3));
    buffer.set(4, pl(0, 4));
    t.onLive(3, pl(0, 3, true)); // flipped bytes on the way
    assert.deepEqual(s.replays.at(-1), { from: 3, attempt: 0 });
    t.onLive(4, pl(0, 4));
    answer(t, s, buffer);
    assert.deepEqual(s.applied, ["0:0", "0:1", "0:2", "0:3", "0:4"]);
    assert.deepEqual(s.drops, []);
    assert.equal(t.state(), "live");
  });

  it("a replayed batch that does not decode cuts the answer and is asked again", () => {
    const { t, s, buffer } = liveTracker(3);
    for (let i = 3; i < 7; i++) buffer.set(i, pl(0, i));
    t.onLive(6, pl(0, 6)); // gap 3..5
    const good = buffer.get(4) as Uint8Array;
    buffer.set(4, pl(0, 4, true));
    answer(t, s, buffer);
    assert.deepEqual(s.replays.at(-1), { from: 4, attempt: 0 });
    buffer.set(4, good);
    answer(t, s, buffer);
    assert.deepEqual(
      s.applied.map((a) => a.split(":")[1]),
      ["0", "1", "2", "3", "4", "5", "6"],
    );
    assert.deepEqual(s.drops, []);
  });

  it("without a good copy the stream is dropped and rebuilt from what follows", () => {
    const { t, s, buffer } = liveTracker(3);
    buffer.set(3, pl(0, 3, true)); // the engine's own copy is bad too
    t.onLive(3, pl(0, 3, true));
    for (let i = 0; i < 10 && s.lost.length === 0; i++) answer(t, s, buffer);
    assert.deepEqual(s.lost, [3]);
    assert.deepEqual(s.drops, ["gap"]);
    assert.ok(s.replays.length <= 1 + 4, `${s.replays.length} replays`);
    t.onLive(4, pl(0, 4));
    t.onLive(5, pl(0, 5));
    assert.deepEqual(s.applied, ["0:4", "0:5"]);
    assert.equal(t.state(), "live");
  });

  it("without a replay endpoint an undecodable batch drops the stream at once", () => {
    const s = new Sink();
    const t = new SeqTracker(sinkOf(s), { replay: false });
    t.start();
    t.onLive(0, pl(0, 0));
    t.onLive(1, pl(0, 1, true));
    assert.deepEqual(s.lost, [1]);
    assert.deepEqual(s.drops, ["gap"]);
    t.onLive(2, pl(0, 2));
    assert.deepEqual(s.applied, ["0:2"]);
  });
});
