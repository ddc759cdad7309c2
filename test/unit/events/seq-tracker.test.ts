import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { streamsOf } from "../../../src/events/manager.ts";
import { type DropReason, type SeqSink, SeqTracker } from "../../../src/events/seq-tracker.ts";
import { dataParallelEndpoint as rankEndpoint } from "../../../src/protocol/endpoints.ts";
import { backoffDelay } from "../../../src/util/backoff.ts";

/**
 * A simulated engine (epochs = process lifetimes, a bounded replay buffer) and a lossy network
 * drive the tracker; a recording sink checks what it applies.
 */
function payloadOf(epoch: number, seq: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, epoch);
  new DataView(b.buffer).setUint32(4, seq);
  return b;
}
function decode(p: Uint8Array): { epoch: number; seq: number } {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  return { epoch: v.getUint32(0), seq: v.getUint32(4) };
}

class Recorder implements SeqSink {
  /** (epoch, seq) applied since the last drop */
  applied: Array<{ epoch: number; seq: number }> = [];
  drops: DropReason[] = [];
  replayRequests: number[] = [];
  violations: string[] = [];
  apply(seq: number, payload: Uint8Array): boolean {
    const m = decode(payload);
    if (m.seq !== seq) this.violations.push(`apply seq ${seq} carries ${m.seq}`);
    const prev = this.applied[this.applied.length - 1];
    if (prev && (prev.epoch !== m.epoch || prev.seq + 1 !== m.seq)) {
      this.violations.push(`non-contiguous apply ${JSON.stringify(prev)} -> ${JSON.stringify(m)}`);
    }
    this.applied.push(m);
    return true;
  }
  drop(reason: DropReason): void {
    this.drops.push(reason);
    this.applied = [];
  }
  requestReplay(fromSeq: number): void {
    this.replayRequests.push(fromSeq);
  }
}

class Engine {
  epoch = 0;
  next = 0;
  buffer: Uint8Array[] = [];
  bufferSeqs: number[] = [];
  constructor(readonly bufferSize: number) {}
  publish(): { seq: number; payload: Uint8Array } {
    const seq = this.next++;
    const payload = payloadOf(this.epoch, seq);
    this.buffer.push(payload);
    this.bufferSeqs.push(seq);
    if (this.buffer.length > this.bufferSize) {
      this.buffer.shift();
      this.bufferSeqs.shift();
    }
    return { seq, payload };
  }
  restart(): void {
    this.epoch++;
    this.next = 0;
    this.buffer = [];
    this.bufferSeqs = [];
  }
  replay(from: number): Array<{ seq: number; payload: Uint8Array }> {
    const out = [];
    for (let i = 0; i < this.buffer.length; i++) {
      if (this.bufferSeqs[i] >= from) out.push({ seq: this.bufferSeqs[i], payload: this.buffer[i] });
    }
    return out;
  }
}

type Op =
  | { t: "publish"; deliver: boolean; dup: boolean }
  | { t: "restart" }
  | { t: "reconnect" }
  | { t: "probe" }
  | { t: "late"; back: number }
  | { t: "serve"; fail: boolean; split: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({ t: fc.constant("publish" as const), deliver: fc.boolean(), dup: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.constant({ t: "restart" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "reconnect" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "probe" as const }) },
  // a copy of an older batch of the same process arriving late (a relay, a slow path)
  { weight: 1, arbitrary: fc.record({ t: fc.constant("late" as const), back: fc.nat(150) }) },
  {
    weight: 4,
    arbitrary: fc.record({ t: fc.constant("serve" as const), fail: fc.boolean(), split: fc.nat(5) }),
  },
);

interface RunResult {
  rec: Recorder;
  engine: Engine;
  tracker: SeqTracker;
  failures: number;
}

function run(
  ops: Op[],
  opts: { replay: boolean; bufferSize: number; maxPending: number; failOk: boolean; warmup?: number },
): RunResult {
  const engine = new Engine(opts.bufferSize);
  const rec = new Recorder();
  const tracker = new SeqTracker(rec, { replay: opts.replay, maxPending: opts.maxPending, recentSize: 64 });
  let served = 0; // replay requests answered so far
  let failures = 0;
  // an answered replay may be split: part of it arrives, then live traffic, then the rest
  let inFlight: { msgs: Array<{ seq: number; payload: Uint8Array }>; pos: number } | null = null;
  const serve = (fail: boolean, split: number) => {
    if (!inFlight) {
      if (served >= rec.replayRequests.length) return;
      const from = rec.replayRequests[served++];
      if (fail && opts.failOk) {
        failures++;
        tracker.onReplayFailed();
        return;
      }
      inFlight = { msgs: engine.replay(from), pos: 0 };
    }
    const end = split > 0 ? Math.min(inFlight.msgs.length, inFlight.pos + split) : inFlight.msgs.length;
    for (; inFlight.pos < end; inFlight.pos++) {
      const m = inFlight.msgs[inFlight.pos];
      tracker.onReplayMessage(m.seq, m.payload);
    }
    if (inFlight.pos >= inFlight.msgs.length) {
      inFlight = null;
      tracker.onReplayEnd();
    }
  };
  tracker.start();
  // a history longer than the fingerprint ring, so late copies can be older than it remembers
  for (let i = 0; i < (opts.warmup ?? 0); i++) {
    const m = engine.publish();
    tracker.onLive(m.seq, m.payload);
    serve(false, 0);
  }
  let lastDelivered: { seq: number; payload: Uint8Array } | null = null;
  for (const op of ops) {
    if (op.t === "publish") {
      const m = engine.publish();
      if (op.deliver) {
        tracker.onLive(m.seq, m.payload);
        lastDelivered = m;
      }
      if (op.dup && lastDelivered) tracker.onLive(lastDelivered.seq, lastDelivered.payload);
    } else if (op.t === "restart") {
      engine.restart();
      lastDelivered = null;
      // a new process means a new TCP connection: the monitor reports it before new messages
      tracker.reconnected();
    } else if (op.t === "reconnect") {
      tracker.reconnected();
    } else if (op.t === "probe") {
      tracker.probe();
    } else if (op.t === "late") {
      const seq = engine.next - 1 - op.back;
      if (seq >= 0) tracker.onLive(seq, payloadOf(engine.epoch, seq));
    } else {
      serve(op.fail, op.split);
    }
    assert.deepEqual(rec.violations, []);
  }
  // quiescence: two more batches that arrive, every replay answered in full
  for (let k = 0; k < 2; k++) {
    const m = engine.publish();
    tracker.onLive(m.seq, m.payload);
    for (let i = 0; i < 1000 && (inFlight || served < rec.replayRequests.length); i++) serve(false, 0);
  }
  return { rec, engine, tracker, failures };
}

describe("SeqTracker", () => {
  it("applies each batch once, in order, within one engine process, whatever the history", () => {
    fc.assert(
      fc.property(
        fc.array(opArb, { maxLength: 120 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 20 }),
        (ops, replay, bufferSize, maxPending) => {
          const { rec, engine, tracker } = run(ops, { replay, bufferSize, maxPending, failOk: true });
          assert.deepEqual(rec.violations, []);
          // the stream's entries are a contiguous run of the current process ending at its newest batch
          const last = rec.applied[rec.applied.length - 1];
          assert.ok(last, "something applied after the final batch");
          assert.equal(last.epoch, engine.epoch);
          assert.equal(last.seq, engine.next - 1);
          assert.equal(tracker.last, engine.next - 1);
          assert.equal(tracker.state(), "live");
          assert.equal(tracker.pendingCount(), 0);
        },
      ),
      { numRuns: Number(process.env.KVSYNC_PROP_RUNS ?? 400) },
    );
  });

  it("with a replay buffer that holds everything and no failures, the stream is complete", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 200 }), fc.integer({ min: 1, max: 20 }), (ops, maxPending) => {
        const { rec, engine, tracker } = run(ops, {
          replay: true,
          bufferSize: 1000,
          maxPending,
          failOk: false,
        });
        assert.deepEqual(rec.violations, []);
        assert.deepEqual(
          rec.applied,
          Array.from({ length: engine.next }, (_, seq) => ({ epoch: engine.epoch, seq })),
        );
        // nothing was dropped except for engine restarts, one drop per restart at most (a late
        // batch the ring forgot is verified, not taken for one)
        assert.ok(
          rec.drops.every((d) => d === "restart"),
          `drops: ${rec.drops}`,
        );
        assert.ok(rec.drops.length <= engine.epoch, `${rec.drops.length} drops, ${engine.epoch} restarts`);
        assert.equal(tracker.state(), "live");
      }),
      { numRuns: Number(process.env.KVSYNC_PROP_RUNS ?? 400) },
    );
  });

  it("late copies of batches older than the ring never count as restarts", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 120 }), fc.integer({ min: 1, max: 20 }), (ops, maxPending) => {
        const { rec, engine } = run(ops, {
          replay: true,
          bufferSize: 1000,
          maxPending,
          failOk: false,
          warmup: 100,
        });
        assert.deepEqual(rec.violations, []);
        assert.deepEqual(
          rec.applied,
          Array.from({ length: engine.next }, (_, seq) => ({ epoch: engine.epoch, seq })),
        );
        assert.ok(rec.drops.length <= engine.epoch, `${rec.drops} after ${engine.epoch} restarts`);
      }),
      { numRuns: Number(process.env.KVSYNC_PROP_RUNS ?? 200) },
    );
  });

  it("a gap asks for replay from last + 1 and merges live batches without duplicates", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true });
    t.start();
    assert.deepEqual(rec.replayRequests, [0]);
    assert.equal(t.state(), "replaying");
    t.onReplayEnd(); // empty buffer
    assert.equal(t.state(), "live");
    t.onLive(0, payloadOf(0, 0));
    t.onLive(3, payloadOf(0, 3)); // 1, 2 lost
    assert.deepEqual(rec.replayRequests, [0, 1]);
    assert.equal(t.state(), "replaying");
    t.onLive(4, payloadOf(0, 4));
    for (const s of [1, 2, 3, 4]) t.onReplayMessage(s, payloadOf(0, s));
    t.onReplayEnd();
    t.onLive(5, payloadOf(0, 5));
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [0, 1, 2, 3, 4, 5],
    );
    assert.equal(t.state(), "live");
    assert.deepEqual(rec.drops, []);
  });

  it("a replay starting after the requested seq drops the stream and resyncs", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true });
    t.start();
    t.onReplayMessage(0, payloadOf(0, 0));
    t.onReplayEnd();
    t.onLive(5, payloadOf(0, 5));
    assert.deepEqual(rec.replayRequests, [0, 1]);
    t.onReplayMessage(3, payloadOf(0, 3)); // the buffer moved on: 1, 2 are gone
    assert.deepEqual(rec.drops, ["gap"]);
    assert.equal(t.state(), "resyncing");
    t.onReplayMessage(4, payloadOf(0, 4));
    t.onReplayMessage(5, payloadOf(0, 5));
    t.onReplayEnd();
    assert.equal(t.state(), "live");
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [3, 4, 5],
    );
  });

  it("a backward seq with another payload is a restart, the same payload a duplicate", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: false });
    t.start();
    for (const s of [0, 1, 2, 3]) t.onLive(s, payloadOf(0, s));
    t.onLive(2, payloadOf(0, 2));
    assert.deepEqual(rec.drops, []);
    t.onLive(1, payloadOf(1, 1)); // new process, its seq 0 was lost
    assert.deepEqual(rec.drops, ["restart"]);
    t.onLive(2, payloadOf(1, 2));
    assert.deepEqual(rec.applied, [
      { epoch: 1, seq: 1 },
      { epoch: 1, seq: 2 },
    ]);
  });

  it("a failed replay drops the stream; a failed first pick-up does not", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true });
    t.start();
    t.onLive(7, payloadOf(0, 7));
    t.onReplayFailed();
    assert.deepEqual(rec.drops, []);
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [7],
    );
    t.onLive(9, payloadOf(0, 9));
    t.onReplayFailed();
    assert.deepEqual(rec.drops, ["gap"]);
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [9],
    );
  });

  it("an idle probe finds a lost final batch", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true });
    t.start();
    t.onReplayEnd();
    t.onLive(0, payloadOf(0, 0)); // seq 1 is lost and nothing follows
    assert.equal(t.probe(), true);
    assert.deepEqual(rec.replayRequests, [0, 1]);
    t.onReplayMessage(1, payloadOf(0, 1));
    t.onReplayEnd();
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [0, 1],
    );
    assert.equal(t.probe(), true);
    assert.equal(t.state(), "live", "a probe does not take the stream out of live");
    t.onReplayEnd(); // nothing new
    assert.equal(t.state(), "live");
    assert.equal(t.probe(), true);
    t.onReplayFailed(); // the replay endpoint is away: nothing is known to be lost
    assert.deepEqual(rec.drops, []);
    assert.equal(t.state(), "live");
  });

  it("--from-seq: a reconnect before the first batch resumes the pick-up from the same seq", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true });
    t.start(5);
    assert.deepEqual(rec.replayRequests, [5]);
    t.reconnected(); // while the first replay runs
    t.onReplayEnd();
    assert.deepEqual(rec.replayRequests, [5, 5]);
    t.onReplayMessage(5, payloadOf(0, 5));
    t.onReplayEnd();
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [5],
    );
    assert.deepEqual(rec.drops, []);
  });

  it("the pending queue is bounded; what it sheds is recovered as a gap", () => {
    const rec = new Recorder();
    const t = new SeqTracker(rec, { replay: true, maxPending: 2 });
    t.start();
    for (const s of [0, 1, 2, 3]) t.onLive(s, payloadOf(0, s));
    assert.equal(t.pendingCount(), 2);
    assert.equal(t.overflowed, 2);
    t.onReplayEnd(); // empty buffer at request time
    t.onLive(4, payloadOf(0, 4)); // 2, 3 were shed: a gap
    assert.deepEqual(rec.replayRequests, [0, 2]);
    for (const s of [2, 3, 4]) t.onReplayMessage(s, payloadOf(0, s));
    t.onReplayEnd();
    assert.deepEqual(
      rec.applied.map((a) => a.seq),
      [0, 1, 2, 3, 4],
    );
  });
});

describe("subscriber helpers", () => {
  it("reconnect backoff is jittered in [delay/2, delay] and capped", () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const full = Math.min(5000, 100 * 2 ** attempt);
      for (const r of [0, 0.5, 0.999]) {
        const d = backoffDelay(attempt, 100, 5000, () => r);
        assert.ok(
          d >= Math.floor(full / 2) && d <= full,
          `attempt ${attempt}: ${d} not in [${full / 2}, ${full}]`,
        );
      }
    }
    assert.equal(
      backoffDelay(100, 100, 5000, () => 0.999),
      4998,
    );
  });

  it("streams per pod: one per DP rank on port + r; none without an events endpoint", () => {
    const base = {
      name: "p",
      model: "m",
      loras: [],
      http: "http://h:1",
      events: "tcp://h:5557",
      replay: null,
      dataParallelSize: 1,
      ready: true,
    };
    assert.deepEqual(
      streamsOf(base).map((s) => [s.ref.streamId, s.ref.rank, s.events, s.replay]),
      [["p", null, "tcp://h:5557", null]],
    );
    assert.deepEqual(
      streamsOf({ ...base, dataParallelSize: 3, replay: "tcp://h:6000" }).map((s) => [
        s.ref.streamId,
        s.events,
        s.replay,
      ]),
      [
        ["p#0", "tcp://h:5557", "tcp://h:6000"],
        ["p#1", "tcp://h:5558", "tcp://h:6001"],
        ["p#2", "tcp://h:5559", "tcp://h:6002"],
      ],
    );
    assert.deepEqual(streamsOf({ ...base, events: null }), []);
    assert.equal(rankEndpoint("ipc:///tmp/kv", 2), "ipc:///tmp/kv_dp2");
    assert.equal(rankEndpoint("tcp://h:65535", 1), null);
  });
});
