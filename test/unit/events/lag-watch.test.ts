import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import { Registry } from "prom-client";
import { type LagSink, LagWatch } from "../../../src/events/lag-watch.ts";
import { createSubscriberMetrics } from "../../../src/events/metrics.ts";

interface Rig {
  watch: LagWatch;
  lines: Array<Record<string, unknown>>;
  calls: { lag: number[]; floors: number[]; high: number; skew: number[]; cleared: number };
  clock: { now: number };
}

function rig(opts = {}): Rig {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const calls = { lag: [] as number[], floors: [] as number[], high: 0, skew: [] as number[], cleared: 0 };
  const sink: LagSink = {
    lag: (s) => calls.lag.push(s),
    lagFloor: (s) => calls.floors.push(s),
    lagHigh: () => calls.high++,
    skew: (s) => calls.skew.push(s),
    skewCleared: () => calls.cleared++,
  };
  const clock = { now: 1_000_000_000 };
  const watch = new LagWatch(sink, log, { stream: "p", pod: "p" }, opts, () => clock.now);
  return { watch, lines, calls, clock };
}

/** batches every 100 ms for `ms`, each stamped `lagMs` before it arrives */
function feed(r: Rig, ms: number, lagMs: number | (() => number), seq0 = 0): number {
  let seq = seq0;
  for (let t = 0; t < ms; t += 100) {
    r.clock.now += 100;
    const l = typeof lagMs === "number" ? lagMs : lagMs();
    r.watch.observe((r.clock.now - l) / 1000, seq++);
  }
  return seq;
}

const events = (r: Rig, name: string) => r.lines.filter((l) => l.event === name);

describe("LagWatch: event lag and clock skew per stream", () => {
  it("a link that delays every batch is lag high once per episode, with pod, seq and lag", () => {
    const r = rig({ lagWarnMs: 250 });
    let seq = feed(r, 3000, 20);
    assert.equal(events(r, "subscriber.lag_high").length, 0);
    seq = feed(r, 3000, 500, seq);
    const high = events(r, "subscriber.lag_high");
    assert.equal(high.length, 1);
    assert.equal(high[0].pod, "p");
    assert.equal(typeof high[0].seq, "number");
    assert.ok((high[0].lagMs as number) >= 500);
    assert.equal(r.calls.high, 1);
    feed(r, 3000, 20, seq);
    assert.equal(events(r, "subscriber.lag_normal").length, 1);
    assert.ok(r.calls.floors.at(-1)! < 0.25);
  });

  it("one late batch in a window (a GC pause) is not lag high: the window's floor is", () => {
    const r = rig({ lagWarnMs: 250 });
    let n = 0;
    feed(r, 10_000, () => (++n % 7 === 0 ? 2000 : 10));
    assert.equal(r.calls.high, 0);
    assert.equal(events(r, "subscriber.lag_high").length, 0);
  });

  it("a flapping stream is rate-limited in the log, never in the counter", () => {
    const r = rig({ lagWarnMs: 250, logEveryMs: 60_000 });
    let seq = 0;
    for (let k = 0; k < 20; k++) {
      seq = feed(r, 2500, 600, seq);
      seq = feed(r, 2500, 5, seq);
    }
    assert.equal(r.calls.high, 20);
    const logged = events(r, "subscriber.lag_high").length + events(r, "subscriber.lag_normal").length;
    // 100 s of flapping: the burst of 5, then one more line per minute
    assert.equal(logged, 6);
  });

  it("a batch stamped 30 s ahead is clock skew: logged, kept out of the lag figures", () => {
    const r = rig({ clockSkewWarnMs: 2000 });
    const seq = feed(r, 2000, -30_000);
    const skew = events(r, "subscriber.clock_skew");
    assert.equal(skew.length, 1, "rate-limited: one line while it lasts under logEveryMs");
    assert.ok(Math.abs((skew[0].skewMs as number) - 30_000) < 5);
    assert.equal(r.calls.lag.length, 0);
    assert.equal(r.calls.floors.length, 0);
    assert.ok(r.calls.skew.every((s) => Math.abs(s - 30) < 0.01));
    feed(r, 1500, 10, seq);
    assert.equal(r.calls.cleared, 1);
    assert.equal(events(r, "subscriber.clock_skew_cleared").length, 1);
    assert.ok(r.calls.lag.length > 0 && r.calls.lag.every((s) => s >= 0 && s < 0.02));
  });

  it("a small lead (clocks a little apart) is lag 0, not skew", () => {
    const r = rig({ clockSkewWarnMs: 2000 });
    feed(r, 2000, -500);
    assert.equal(r.calls.skew.length, 0);
    assert.ok(r.calls.lag.every((s) => s === 0));
  });

  it("the metrics: counters and gauges per stream, removed with the stream", async () => {
    const reg = new Registry();
    const m = createSubscriberMetrics(reg, () => [], {
      stats: () => ({ entries: 0, blocks: 0, streams: 0, approxBytes: 0, evictions: 0 }),
    } as never);
    m.lagHigh.inc({ stream: "p" });
    m.clockSkews.inc({ stream: "p" });
    m.clockSkewSeconds.set({ stream: "p" }, 30);
    m.lagFloorSeconds.set({ stream: "p" }, 0.5);
    const text = await reg.metrics();
    for (const name of [
      'kvsync_subscriber_lag_high_total{stream="p"} 1',
      'kvsync_subscriber_clock_skews_total{stream="p"} 1',
      'kvsync_subscriber_clock_skew_seconds{stream="p"} 30',
      'kvsync_subscriber_event_lag_floor_seconds{stream="p"} 0.5',
    ])
      assert.ok(text.includes(name), name);
    m.removeStream("p");
    assert.ok(!(await reg.metrics()).includes('stream="p"'));
  });
});
