import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import { Registry } from "prom-client";
import { apiTiming } from "../../../src/discovery/api-timing.ts";

describe("discovery API timing", () => {
  it("every request lands in the histogram; a slow one is counted and logged as discovery.slow", async () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
    const reg = new Registry();
    const t = apiTiming(reg, log, 1000);
    t.record("list", "/api/v1/pods", 20, true);
    t.record("watch", "/api/v1/pods", 2100, true);
    t.record("list", "/api/v1/pods", 2050, false);
    const slow = lines.filter((l) => l.event === "discovery.slow");
    assert.deepEqual(
      slow.map((l) => [l.verb, l.durationMs, l.ok]),
      [
        ["watch", 2100, true],
        ["list", 2050, false],
      ],
    );
    const text = await reg.metrics();
    assert.match(text, /kvsync_discovery_slow_requests_total\{verb="watch"\} 1/);
    assert.match(text, /kvsync_discovery_slow_requests_total\{verb="list"\} 1/);
    assert.match(text, /kvsync_discovery_api_request_duration_seconds_count\{verb="list",result="ok"\} 1/);
    assert.match(text, /kvsync_discovery_api_request_duration_seconds_count\{verb="list",result="error"\} 1/);
    // the same registry twice (two sources) shares the metrics
    apiTiming(reg, log, 1000).record("list", "/x", 5, true);
  });

  it("0 turns the slow log off; the histogram still counts", async () => {
    const lines: unknown[] = [];
    const reg = new Registry();
    const t = apiTiming(reg, pino({ level: "info" }, { write: (s: string) => lines.push(s) }), 0);
    t.record("list", "/p", 60_000, true);
    assert.equal(lines.length, 0);
    assert.match(
      await reg.metrics(),
      /kvsync_discovery_api_request_duration_seconds_count\{verb="list",result="ok"\} 1/,
    );
  });
});
