/**
 * /readyz and /healthz of the gateway's admin API: not ready while discovery has not answered
 * or a ready pod's stream is still connecting, ready once it is live, ready with a logged
 * reason once a stream that never comes up gives up; /healthz reports the event-loop delay.
 * The Readiness rules on a fake clock first, then a real gateway, engine and sockets.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pino from "pino";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { startEngine } from "../../../src/engine/start.ts";
import { Readiness } from "../../../src/events/readiness.ts";
import type { StreamState, StreamStatus } from "../../../src/events/types.ts";
import { startGateway } from "../../../src/gateway/gateway.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { deadPort, engineOptions, MODEL } from "./fleet.ts";

type Json = Record<string, unknown>;

function captureLog(): { log: pino.Logger; events: Json[] } {
  const events: Json[] = [];
  const log = pino({ level: "info" }, { write: (s: string) => events.push(JSON.parse(s)) });
  return { log, events };
}

const pod = (name: string, ready = true): PodInfo => ({
  name,
  model: MODEL,
  loras: [],
  http: "http://127.0.0.1:1",
  events: "tcp://127.0.0.1:1",
  replay: null,
  dataParallelSize: 1,
  ready,
});

const status = (pod: string, state: StreamState): StreamStatus => ({
  streamId: pod,
  pod,
  rank: null,
  model: MODEL,
  state,
  lastSeq: null,
  eventsApplied: 0,
  decodeErrors: 0,
  gaps: 0,
  replays: 0,
  resyncs: 0,
});

describe("Readiness (fake clock)", () => {
  it("waits for discovery and every ready pod's stream, gives up once with a logged reason, then latches", () => {
    let now = 0;
    const pods = [pod("a"), pod("b"), pod("c", false)];
    const states: Record<string, StreamState> = { a: "connecting", b: "live", c: "connecting" };
    const { log, events } = captureLog();
    const r = new Readiness(
      { pods: () => pods, statuses: () => Object.entries(states).map(([p, s]) => status(p, s)) },
      log,
      { streamTimeoutMs: 1000, requirePod: true, now: () => now },
    );
    assert.equal(r.check().ready, false, "discovery has not answered");
    r.discoveryAnswered();
    let rep = r.check();
    assert.equal(rep.ready, false);
    // the not-ready pod's stream is not waited for
    assert.deepEqual(rep.streams.waiting, [{ stream: "a", state: "connecting", waitedMs: 0 }]);
    assert.equal(rep.streams.live, 1);
    now = 999;
    assert.equal(r.check().ready, false);
    now = 1000;
    rep = r.check();
    assert.equal(rep.ready, true);
    assert.equal(rep.streams.gaveUp.length, 1);
    assert.match(rep.streams.gaveUp[0].reason, /no ZMTP handshake/);
    const gaveUp = events.filter((e) => e.event === "readiness.stream_gave_up");
    assert.equal(gaveUp.length, 1);
    assert.equal(gaveUp[0].stream, "a");
    assert.equal(gaveUp[0].state, "connecting");
    r.check();
    assert.equal(events.filter((e) => e.event === "readiness.stream_gave_up").length, 1, "logged once");
    // latched: a stream going down later does not make the gateway unready...
    states.b = "down";
    states.d = "connecting";
    pods.push(pod("d"));
    assert.equal(r.check().ready, true);
    // ...but a fleet without any ready pod does
    pods.length = 0;
    assert.equal(r.check().ready, false);
  });

  it("a live stream makes it ready at once; no stream (no events endpoint) is nothing to wait for", () => {
    const states: Record<string, StreamState> = { a: "replaying" };
    const r = new Readiness(
      {
        pods: () => [pod("a"), pod("b")],
        statuses: () => Object.entries(states).map(([p, s]) => status(p, s)),
      },
      pino({ level: "silent" }),
      { streamTimeoutMs: 60_000 },
    );
    r.discoveryAnswered();
    assert.equal(r.check().ready, false);
    states.a = "live";
    assert.deepEqual(r.check(), {
      ready: true,
      discovery: true,
      pods: 2,
      streams: { live: 1, waiting: [], gaveUp: [] },
    });
  });
});

describe("gateway /readyz and /healthz", { timeout: 60_000 }, () => {
  const get = async (url: string) => {
    const r = await fetch(url);
    return { status: r.status, body: (await r.json()) as Json };
  };

  it("not ready while the only stream connects, ready once the engine is up and its stream live", async () => {
    // the engine's events port is known before the engine exists: the SUB keeps connecting
    const [evPort, rpPort] = [await deadPort(), await deadPort()];
    const { log, events } = captureLog();
    const p: PodInfo = {
      ...pod("late"),
      http: "http://127.0.0.1:1",
      events: `tcp://127.0.0.1:${evPort}`,
      replay: `tcp://127.0.0.1:${rpPort}`,
    };
    const gw = await startGateway({
      pods: [p],
      tokenizers: false,
      health: false,
      readiness: { streamTimeoutMs: 60_000 },
      log,
    });
    let engine: Awaited<ReturnType<typeof startEngine>> | null = null;
    try {
      const before = await get(`${gw.adminUrl}/readyz`);
      assert.equal(before.status, 503);
      assert.equal(before.body.status, "not ready");
      const waiting = (before.body.streams as { waiting: Array<{ stream: string; state: string }> }).waiting;
      assert.deepEqual(
        waiting.map((w) => [w.stream, w.state]),
        [["late", "connecting"]],
      );
      engine = await startEngine(
        engineOptions({
          eventsEndpoint: `tcp://127.0.0.1:${evPort}`,
          replayEndpoint: `tcp://127.0.0.1:${rpPort}`,
          // a fixed host:port endpoint connects by vLLM's rule: this one must bind
          eventsBind: true,
        }),
      );
      await waitFor(
        "ready once the stream is live",
        async () => (await get(`${gw.adminUrl}/readyz`)).status === 200,
        {
          timeoutMs: 20_000,
        },
      );
      const after = await get(`${gw.adminUrl}/readyz`);
      assert.deepEqual(after.body.streams, { live: 1, waiting: [], gaveUp: [] });
      assert.equal(gw.subscribers?.status("late")?.state, "live");
      assert.equal(events.filter((e) => e.event === "readiness.stream_gave_up").length, 0);
      assert.equal(events.filter((e) => e.event === "readiness.ready").length, 1);
    } finally {
      await gw.close();
      await engine?.close();
    }
  });

  it("a stream that never comes up gives up after --ready-timeout-ms, logged with its reason", async () => {
    const { log, events } = captureLog();
    const p: PodInfo = { ...pod("nowhere"), events: `tcp://127.0.0.1:${await deadPort()}` };
    const t0 = Date.now();
    const gw = await startGateway({
      pods: [p],
      tokenizers: false,
      health: false,
      readiness: { streamTimeoutMs: 1_000 },
      log,
    });
    try {
      assert.equal((await get(`${gw.adminUrl}/readyz`)).status, 503);
      // the readiness timer logs the give-up without a probe asking
      await waitFor("readiness.stream_gave_up logged", () =>
        events.some((e) => e.event === "readiness.stream_gave_up"),
      );
      assert.ok(Date.now() - t0 >= 1_000, "not before the timeout");
      const line = events.find((e) => e.event === "readiness.stream_gave_up")!;
      assert.equal(line.stream, "nowhere");
      assert.equal(line.state, "connecting");
      const r = await get(`${gw.adminUrl}/readyz`);
      assert.equal(r.status, 200);
      const gaveUp = (r.body.streams as { gaveUp: Array<{ stream: string; reason: string }> }).gaveUp;
      assert.equal(gaveUp[0].stream, "nowhere");
      assert.match(gaveUp[0].reason, /events endpoint/);
    } finally {
      await gw.close();
    }
  });

  it("/healthz reports the event loop's delay, and a blocked loop shows in it", async () => {
    const gw = await startGateway({
      pods: [],
      tokenizers: false,
      health: false,
      log: pino({ level: "silent" }),
    });
    try {
      const h = await get(`${gw.adminUrl}/healthz`);
      assert.equal(h.status, 200);
      assert.equal(h.body.status, "ok");
      const d = h.body.eventLoopDelayMs as {
        maxMs: number;
        meanMs: number;
        p99Ms: number;
        intervalMs: number;
      };
      for (const k of ["maxMs", "meanMs", "p99Ms", "intervalMs"] as const)
        assert.equal(typeof d[k], "number");
      // block the loop for 300 ms: the next full check interval's max shows it
      const until = Date.now() + 300;
      while (Date.now() < until) {
        // busy on purpose
      }
      await waitFor(
        "a delay of 250 ms or more reported",
        async () => {
          const b = (await get(`${gw.adminUrl}/healthz`)).body.eventLoopDelayMs as { maxMs: number };
          return b.maxMs >= 250 ? true : `maxMs ${b.maxMs}`;
        },
        { timeoutMs: 10_000 },
      );
      // and no pod: not ready (nothing to route to)
      assert.equal((await get(`${gw.adminUrl}/readyz`)).status, 503);
    } finally {
      await gw.close();
    }
  });
});
