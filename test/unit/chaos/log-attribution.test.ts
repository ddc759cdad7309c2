import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { logMark, readLog, warningsIn } from "../../chaos/harness/observe.ts";
import { SignalWatch } from "../../chaos/harness/signal-watch.ts";

// The chaos harness attributes the gateway's log lines to an experiment by when they reached the
// log (byte offsets taken at the fault's start and at recovery), not by their `time`: the
// gateway time-skew experiment makes the gateway stamp lines 30 s ahead, which a timestamp
// filter counted as warnings of the experiment after it.
describe("chaos harness: log attribution", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvsync-attr-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const line = (time: number, event: string, level = 40, extra: Record<string, unknown> = {}) =>
    `${JSON.stringify({ level, time, event, ...extra })}\n`;

  it("lines written 30 s ahead during one experiment are not the next one's", () => {
    const file = join(dir, "skew.log");
    const t0 = Date.now();
    writeFileSync(file, line(t0, "subscriber.stalled"));
    // experiment A: the gateway's clock skewed +30 s
    const aFrom = logMark(file);
    appendFileSync(file, line(t0 + 30_000, "process.clock_jump", 40, { offsetMs: 30_000 }));
    appendFileSync(file, line(t0 + 31_000, "subscriber.lag_high", 40, { pod: "default/engine-1" }));
    const aTo = logMark(file);
    // experiment B starts a second later, the clock back to normal
    const bFrom = logMark(file);
    appendFileSync(file, line(t0 + 1_000, "discovery.slow"));
    const bTo = logMark(file);

    assert.deepEqual(warningsIn(file, { from: aFrom, to: aTo }), {
      "process.clock_jump": 1,
      "subscriber.lag_high": 1,
    });
    assert.deepEqual(warningsIn(file, { from: bFrom, to: bTo }), { "discovery.slow": 1 });
    // what the timestamp filter did: B's start time took A's skewed lines
    const byTime = readLog(file).filter((l) => l.time >= t0 + 1_000 && l.level >= 40);
    assert.equal(byTime.length, 3, "the old filter's view, for contrast");
  });

  it("a line cut at the range's end belongs to the range its end reaches", () => {
    const file = join(dir, "cut.log");
    const a = line(1, "a.one");
    const b = line(2, "b.two");
    writeFileSync(file, a + b.slice(0, 10));
    const mark = logMark(file);
    appendFileSync(file, b.slice(10));
    assert.deepEqual(
      readLog(file, 0, mark).map((l) => l.event),
      ["a.one"],
    );
    assert.deepEqual(
      readLog(file, Buffer.byteLength(a)).map((l) => l.event),
      ["b.two"],
    );
  });

  it("the signal watch times an event by when it read it, whatever the line's time says", async () => {
    const file = join(dir, "watch.log");
    writeFileSync(file, line(Date.now() + 30_000, "process.clock_jump"));
    const from = logMark(file);
    const watch = new SignalWatch({
      file,
      from,
      events: ["process.clock_jump", "subscriber.stalled"],
      pods: new Set(["default/engine-1"]),
      metrics: [],
      metricsBefore: "",
      scrape: async () => "",
      pollMs: 20,
    }).start();
    const before = Date.now();
    // a stalled line of another pod does not count; one of the affected pod does
    appendFileSync(file, line(before + 30_000, "subscriber.stalled", 40, { pod: "default/engine-2" }));
    appendFileSync(file, line(before + 30_000, "subscriber.stalled", 40, { pod: "default/engine-1" }));
    const until = Date.now() + 5_000;
    while (!watch.events.has("subscriber.stalled") && Date.now() < until)
      await new Promise((r) => setTimeout(r, 20));
    await watch.stop();
    const seen = watch.events.get("subscriber.stalled");
    assert.ok(seen, "the stalled line was seen");
    assert.equal(seen.line.pod, "default/engine-1");
    assert.ok(seen.seenAt >= before && seen.seenAt < before + 5_000, `seen at ${seen.seenAt - before} ms`);
    // the skewed line written before the watch's start is not this watch's
    assert.equal(watch.events.has("process.clock_jump"), false);
    assert.deepEqual(watch.first(), { at: seen.seenAt, signal: "subscriber.stalled" });
  });

  it("the signal watch times a metric by the first scrape that shows it grown", async () => {
    let value = 0;
    const watch = new SignalWatch({
      file: join(dir, "absent.log"),
      from: 0,
      events: [],
      pods: new Set(),
      metrics: ['kvsync_gateway_pod_slow_total{pod="default/engine-1"}'],
      metricsBefore: 'kvsync_gateway_pod_slow_total{pod="default/engine-1"} 0\n',
      scrape: async () => `kvsync_gateway_pod_slow_total{pod="default/engine-1"} ${value}\n`,
      scrapeMs: 20,
    }).start();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(watch.metrics.size, 0);
    const grewAt = Date.now();
    value = 1;
    const until = Date.now() + 5_000;
    while (watch.metrics.size === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    await watch.stop();
    const at = watch.metrics.get('kvsync_gateway_pod_slow_total{pod="default/engine-1"}');
    assert.ok(at !== undefined && at >= grewAt, "the growth was seen after it happened");
  });
});
