import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import { Registry } from "prom-client";
import { startProcessWatch } from "../../../src/util/process-watch.ts";

function sink() {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, log: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }) };
}

const busy = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end) {}
};
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("process watch: event-loop delay and wall-clock jumps", () => {
  it("a blocked event loop is logged, counted and its delay a gauge", async () => {
    const { lines, log } = sink();
    const reg = new Registry();
    const w = startProcessWatch(reg, log, { eventLoopWarnMs: 100, intervalMs: 60_000 });
    try {
      await tick(30);
      w.check();
      assert.equal(lines.filter((l) => l.event === "process.event_loop_blocked").length, 0);
      // the histogram samples on a timer: block the loop between two of its samples
      await tick(30);
      busy(300);
      await tick(30);
      w.check();
      const blocked = lines.filter((l) => l.event === "process.event_loop_blocked");
      assert.equal(blocked.length, 1);
      assert.ok((blocked[0].delayMs as number) >= 250, JSON.stringify(blocked[0]));
      const text = await reg.metrics();
      assert.match(text, /kvsync_process_event_loop_blocked_total 1/);
      const g = Number(text.match(/^kvsync_process_event_loop_delay_seconds (\S+)$/m)?.[1]);
      assert.ok(g >= 0.25, text);
    } finally {
      w.stop();
    }
  });

  it("a wall clock stepped 30 s against the monotonic clock is a jump (once), the offset a gauge", async () => {
    const { lines, log } = sink();
    const reg = new Registry();
    let wall = 1_000_000;
    let mono = 0;
    const w = startProcessWatch(reg, log, {
      eventLoopWarnMs: 0,
      intervalMs: 60_000,
      wallNow: () => wall,
      monoNow: () => mono,
    });
    try {
      for (let k = 0; k < 3; k++) {
        wall += 1000;
        mono += 1000;
        w.check();
      }
      assert.equal(lines.length, 0);
      wall += 31_000;
      mono += 1000;
      w.check();
      wall += 1000;
      mono += 1000;
      w.check();
      const jumps = lines.filter((l) => l.event === "process.clock_jump");
      assert.equal(jumps.length, 1);
      assert.equal(jumps[0].jumpMs, 30_000);
      const text = await reg.metrics();
      assert.match(text, /kvsync_process_clock_jumps_total 1/);
      assert.match(text, /kvsync_process_wall_clock_offset_seconds 30/);
      // and back: a step of -30 s is a jump too
      wall -= 29_000;
      mono += 1000;
      w.check();
      assert.equal(lines.filter((l) => l.event === "process.clock_jump").length, 2);
    } finally {
      w.stop();
    }
  });
});
