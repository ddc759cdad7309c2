/**
 * The per-pod pressure signal (gateway/pod-pressure.ts): a pod whose container's PSI stall time
 * grows at `ratio` of wall time for `sustain` scrapes is `gateway.pod_pressure`; OOM kills are
 * `gateway.pod_oom_kill`; a counter that starts over (a new cgroup) is not a negative stall.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import { GatewayMetrics } from "../../../src/gateway/metrics.ts";
import { PodPressure, parseContainerSample } from "../../../src/gateway/pod-pressure.ts";

type Line = { event?: string; pod?: string; resource?: string; stallShare?: number; kills?: number };

function rig() {
  const lines: Line[] = [];
  const log = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const metrics = new GatewayMetrics();
  const p = new PodPressure({ ratio: 0.5, sustain: 2 }, metrics, log);
  const gauge = async (pod: string, resource: string) =>
    (await metrics.podPressure.get()).values.find(
      (v) => v.labels.pod === pod && v.labels.resource === resource,
    )?.value;
  const ooms = async (pod: string) =>
    (await metrics.podOomKills.get()).values.find((v) => v.labels.pod === pod)?.value ?? 0;
  return { p, lines, gauge, ooms };
}

const text = (cpu: number, mem: number, io: number, oom = 0) =>
  [
    "# HELP vllm:num_requests_running x",
    'vllm:num_requests_running{model_name="m",engine="0"} 1',
    `container_pressure_cpu_waiting_seconds_total ${cpu}`,
    `container_pressure_memory_waiting_seconds_total ${mem}`,
    `container_pressure_io_waiting_seconds_total{container="engine"} ${io}`,
    `container_oom_events_total ${oom}`,
    "",
  ].join("\n");

describe("pod pressure", () => {
  it("parses cAdvisor's container figures (with or without labels) and nothing else", () => {
    assert.deepEqual(parseContainerSample(text(1.5, 0.25, 3, 7)), {
      stall: { cpu: 1.5, memory: 0.25, io: 3 },
      oomKills: 7,
    });
    assert.equal(parseContainerSample('vllm:num_requests_running{engine="0"} 1\n'), null);
    assert.equal(parseContainerSample("\ncontainer_pressure_cpu_waiting_seconds_total NaN\n"), null);
  });

  it("a pod stalled on CPU for 2 scrapes in a row is reported once, then cleared", async () => {
    const { p, lines, gauge } = rig();
    // 1 s scrapes: cpu stalls 0.9 s per s from the 2nd scrape, for 4 scrapes, then 0.05
    const cpu = [0, 0.1, 1.0, 1.9, 2.8, 3.7, 3.75, 3.8];
    for (const [i, c] of cpu.entries()) p.observe("a", text(c, 0, 0), i * 1000);
    const ev = lines.filter((l) => l.event?.startsWith("gateway.pod_pressure"));
    assert.deepEqual(
      ev.map((l) => [l.event, l.resource]),
      [
        ["gateway.pod_pressure", "cpu"],
        ["gateway.pod_pressure_cleared", "cpu"],
      ],
    );
    assert.equal(ev[0].stallShare, 0.9);
    assert.ok(Math.abs((await gauge("a", "cpu"))! - 0.05) < 1e-9);
    assert.equal(await gauge("a", "io"), 0);
  });

  it("one scrape over the ratio is not pressure; a counter that went down starts over", () => {
    const { p, lines } = rig();
    // a spike, then the counter restarts from 0 (moved to a new cgroup): not a stall either way
    for (const [i, c] of [0, 0.9, 1.0, 0, 0.1].entries()) p.observe("a", text(0, c, 0), i * 1000);
    assert.equal(lines.filter((l) => l.event === "gateway.pod_pressure").length, 0);
  });

  it("OOM kills are reported as they grow", async () => {
    const { p, lines, ooms } = rig();
    for (const [i, n] of [3, 3, 9].entries()) p.observe("b", text(0, 0, 0, n), i * 1000);
    const ev = lines.filter((l) => l.event === "gateway.pod_oom_kill");
    assert.equal(ev.length, 1);
    assert.equal(ev[0].kills, 6);
    assert.equal(await ooms("b"), 6);
  });

  it("forgets pods gone from discovery", async () => {
    const { p, gauge } = rig();
    p.observe("c", text(0, 0, 0), 0);
    p.observe("c", text(0.5, 0, 0), 1000);
    assert.equal(await gauge("c", "cpu"), 0.5);
    p.retain(new Set());
    assert.equal(await gauge("c", "cpu"), undefined);
  });

  it("rejects a ratio outside 0..1", () => {
    assert.throws(
      () => new PodPressure({ ratio: 2 }, new GatewayMetrics(), pino({ level: "silent" })),
      /0\.\.1/,
    );
  });
});
