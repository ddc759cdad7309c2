/**
 * The per-pod slowness signal (gateway/pod-latency.ts): a pod whose time to first byte is far
 * above the fleet's is `gateway.pod_slow`; a fleet slow as a whole, a noisy pod, a pod with too
 * few requests are not.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import { GatewayMetrics } from "../../../src/gateway/metrics.ts";
import { PodSlowness, type SLOWNESS_DEFAULTS } from "../../../src/gateway/pod-latency.ts";
import { seededRandom } from "../../../src/util/rng.ts";

type Line = { event?: string; pod?: string; via?: string; ttfbP75Ms?: number; fleetTtfbP75Ms?: number };

function rig(opts: Partial<typeof SLOWNESS_DEFAULTS> = {}) {
  const lines: Line[] = [];
  const log = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const metrics = new GatewayMetrics();
  const s = new PodSlowness(opts, metrics, log);
  const counter = async (pod: string) =>
    (await metrics.podSlow.get()).values.find((v) => v.labels.pod === pod)?.value ?? 0;
  const gauge = async (pod: string, source = "ttfb") =>
    (await metrics.podLatencyP75.get()).values.find((v) => v.labels.pod === pod && v.labels.source === source)
      ?.value;
  return { s, lines, counter, gauge };
}

/**
 * `seconds` of traffic: every pod gets `perSecond` requests a second with TTFB from `ttfb(pod,
 * t)`; the signal is evaluated once a second, as the health timer does.
 */
function drive(
  s: PodSlowness,
  pods: string[],
  seconds: number,
  ttfb: (pod: string, t: number) => number,
  perSecond = 20,
  t0 = 0,
): number {
  let t = t0;
  for (let sec = 0; sec < seconds; sec++) {
    for (let k = 0; k < perSecond; k++) {
      t = t0 + sec * 1000 + (k * 1000) / perSecond;
      for (const p of pods) s.observe(p, ttfb(p, t), t);
    }
    s.evaluate(t0 + (sec + 1) * 1000);
  }
  return t0 + seconds * 1000;
}

const PODS = ["default/engine-0", "default/engine-1", "default/engine-2", "default/engine-3"];

describe("pod slowness against the fleet", () => {
  it("a healthy, noisy fleet is never slow: jitter, a pod's 200 ms GC pauses on 5 % of its requests", async () => {
    const { s, lines, counter } = rig();
    const r = seededRandom(7);
    drive(s, PODS, 60, (p) => {
      const base = 6 + r() * 10 + (p.endsWith("0") ? 5 : 0); // engine-0 sits behind a proxy: a bit slower
      return p.endsWith("1") && r() < 0.05 ? base + 200 : base;
    });
    assert.deepEqual(
      lines.filter((l) => l.event === "gateway.pod_slow"),
      [],
    );
    for (const p of PODS) assert.equal(await counter(p), 0);
  });

  it("one pod answering in ~250 ms against a 10 ms fleet is slow within four evaluations (three in a row over the line), then clears", async () => {
    const { s, lines, counter, gauge } = rig();
    const r = seededRandom(11);
    let lossy = false;
    const ttfb = (p: string) => (lossy && p.endsWith("2") ? 200 + r() * 100 : 8 + r() * 4);
    let t = drive(s, PODS, 5, ttfb);
    assert.equal(await counter("default/engine-2"), 0);
    lossy = true;
    t = drive(s, PODS, 4, ttfb, 20, t);
    const slow = lines.filter((l) => l.event === "gateway.pod_slow");
    assert.equal(slow.length, 1, JSON.stringify(lines));
    assert.equal(slow[0].pod, "default/engine-2");
    assert.ok(slow[0].ttfbP75Ms! >= 200 && slow[0].fleetTtfbP75Ms! <= 12, JSON.stringify(slow[0]));
    assert.equal(await counter("default/engine-2"), 1);
    assert.ok((await gauge("default/engine-2"))! >= 0.2);
    assert.equal(s.status("default/engine-2")?.slow, true);
    // still slow: no second line, no second count
    t = drive(s, PODS, 5, ttfb, 20, t);
    assert.equal(await counter("default/engine-2"), 1);
    lossy = false;
    drive(s, PODS, 6, ttfb, 20, t);
    assert.equal(lines.filter((l) => l.event === "gateway.pod_slow_cleared").length, 1);
    assert.equal(s.status("default/engine-2")?.slow, false);
  });

  it("one engine descheduled for a moment (a single slow judgement) is not reported", () => {
    const { s, lines } = rig({ windowMs: 1_000 });
    let t = drive(s, PODS, 5, () => 10);
    // one second of engine-1's answers at 500 ms: one window, one judgement
    t = drive(s, PODS, 1, (p) => (p.endsWith("1") ? 500 : 10), 20, t);
    drive(s, PODS, 5, () => 10, 20, t);
    assert.equal(lines.filter((l) => l.event === "gateway.pod_slow").length, 0);
  });

  it("a fleet slow as a whole (a loaded machine) is nobody's fault", async () => {
    const { s, lines } = rig();
    const r = seededRandom(3);
    drive(s, PODS, 10, () => 300 + r() * 200);
    assert.equal(lines.filter((l) => l.event === "gateway.pod_slow").length, 0);
  });

  it("needs both the ratio and the excess: 30 ms against 5 ms is not slow", () => {
    const { s, lines } = rig();
    drive(s, PODS, 10, (p) => (p.endsWith("3") ? 30 : 5));
    assert.equal(lines.filter((l) => l.event === "gateway.pod_slow").length, 0);
  });

  it("a pod with fewer requests than minSamples in the window is not judged", () => {
    const { s, lines } = rig({ windowMs: 3_000 });
    // 1 request a second: 3 in the 3 s window, under the default 5
    drive(s, ["a", "b", "c"], 10, (p) => (p === "a" ? 1000 : 10), 1);
    assert.equal(lines.filter((l) => l.event === "gateway.pod_slow").length, 0);
    assert.equal(s.status("a")?.ttfbP75Ms, null);
  });

  it("a pod routing avoids is judged on its health probes: slow round trips against the fleet's", async () => {
    const { s, lines, gauge } = rig();
    const r = seededRandom(5);
    let t = 0;
    for (let sec = 0; sec < 12; sec++) {
      t = sec * 1000;
      for (const p of PODS) {
        // the lossy pod gets no request at all (routing went elsewhere), its probes wait for retransmits
        if (!p.endsWith("2")) for (let k = 0; k < 20; k++) s.observe(p, 8 + r() * 4, t + k * 50);
        s.observeProbe(p, p.endsWith("2") && sec >= 6 ? 200 + r() * 600 : 1 + r() * 3, t);
      }
      s.evaluate(t + 1000);
    }
    const slow = lines.filter((l) => l.event === "gateway.pod_slow");
    assert.equal(slow.length, 1, JSON.stringify(lines));
    assert.equal(slow[0].pod, "default/engine-2");
    assert.equal(slow[0].via, "probe");
    assert.ok((await gauge("default/engine-2", "probe"))! >= 0.2);
  });

  it("ratio 0 turns the signal off; retain() forgets pods and their gauge", async () => {
    const off = rig({ ratio: 0 });
    drive(off.s, PODS, 5, (p) => (p.endsWith("2") ? 1000 : 10));
    assert.equal(off.lines.length, 0);
    assert.equal(off.s.status("default/engine-2"), null);
    const { s, gauge } = rig();
    drive(s, PODS, 3, () => 10);
    assert.ok((await gauge("default/engine-3")) !== undefined);
    s.retain(new Set(PODS.slice(0, 3)));
    assert.equal(s.status("default/engine-3"), null);
    assert.equal(await gauge("default/engine-3"), undefined);
  });
});
