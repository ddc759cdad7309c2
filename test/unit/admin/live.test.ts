/**
 * The admin API's live feed (`GET /admin/live`, server-sent events) and the dashboard's files,
 * over real HTTP: snapshot then deltas, decisions as they are made, a slow client dropped at its
 * buffer bound, the client cap, wrong methods; and the routing activity's per-second buckets.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, request } from "node:http";
import { after, describe, test } from "node:test";
import { Registry } from "prom-client";
import { createAdminHandler } from "../../../src/admin/admin.ts";
import type { PodInfo } from "../../../src/discovery/types.ts";
import type { StreamStatus, SubscriberManagerLike } from "../../../src/events/types.ts";
import { RouteActivity } from "../../../src/gateway/activity.ts";
import type { Plan } from "../../../src/gateway/planner.ts";
import { createIndex } from "../../../src/index/index.ts";
import { closeServer, httpUrl, listen } from "../../../src/util/http-server.ts";
import { waitFor } from "../../../src/util/wait.ts";

const MODEL = "m";

function fleetOf(n: number) {
  const pods: PodInfo[] = [];
  const statuses: StreamStatus[] = [];
  for (let i = 0; i < n; i++) {
    const name = `p${i}`;
    pods.push({
      name,
      model: MODEL,
      loras: [],
      http: "",
      events: "tcp://x:1",
      replay: null,
      dataParallelSize: 1,
      ready: true,
    });
    statuses.push({
      streamId: name,
      pod: name,
      rank: null,
      model: MODEL,
      state: "live",
      lastSeq: 1,
      eventsApplied: 10,
      decodeErrors: 0,
      gaps: 0,
      replays: 0,
      resyncs: 0,
    });
  }
  const manager: SubscriberManagerLike & { pods(): PodInfo[] } = {
    setPods: () => undefined,
    statuses: () => statuses.map((s) => ({ ...s })),
    status: (id) => statuses.find((s) => s.streamId === id),
    close: async () => undefined,
    pods: () => pods,
  };
  return { pods, statuses, manager };
}

/** A plan as the planner makes it, for the activity recorder. */
function planFor(pod: string, matched: number, prompt: number): Plan {
  const cand = { streamId: pod, pod, rank: null, http: "", live: true };
  const load = {
    inflightRequests: 1,
    inflightPrefillRequests: 0,
    inflightPrefillTokens: 0,
    engineWaiting: null,
    engineRunning: null,
    kvUsage: null,
  };
  return {
    parsed: { model: MODEL } as Plan["parsed"],
    route: {
      ns: { model: MODEL, lora: null, blockSize: 16 },
      tokenIds: new Array(prompt).fill(1),
      candidates: [cand],
    },
    decision: {
      policy: "kv-aware",
      ranked: [
        {
          candidate: cand,
          matchedBlocks: matched / 16,
          matchedTokens: matched,
          tiers: { GPU: matched / 16, CPU: 0, STORAGE: 0 },
          savedTokens: matched,
          load,
          score: 0.5,
        },
      ],
    },
    tokenized: true,
    prompts: 1,
    outOfRotation: [],
    ticket: null,
  };
}

interface SseEvent {
  event: string;
  data: unknown;
}

/** Read SSE events from a URL until `until` says stop; returns them and closes the request. */
function readEvents(
  url: string,
  until: (evs: SseEvent[]) => boolean,
  timeoutMs = 10_000,
): Promise<SseEvent[]> {
  return new Promise((resolve, reject) => {
    const evs: SseEvent[] = [];
    let buf = "";
    const req = request(url, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`HTTP ${res.statusCode}`));
        res.resume();
        return;
      }
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        for (let i = buf.indexOf("\n\n"); i !== -1; i = buf.indexOf("\n\n")) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (ev && data) evs.push({ event: ev, data: JSON.parse(data) });
        }
        if (until(evs)) {
          clearTimeout(timer);
          req.destroy();
          resolve(evs);
        }
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`timed out; got ${evs.map((e) => e.event).join(",")}`));
    }, timeoutMs);
    req.on("error", (e) => {
      if (!req.destroyed) reject(e);
    });
    req.end();
  });
}

describe("admin live feed", () => {
  const servers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of servers) await c();
  });

  async function serve(opts: Parameters<typeof createAdminHandler>[0]) {
    const admin = createAdminHandler(opts);
    const server = createServer((req, res) => void admin(req, res));
    const port = await listen(server, 0, "127.0.0.1");
    servers.push(() => closeServer(server));
    return httpUrl("127.0.0.1", port);
  }

  test("snapshot on connect, then deltas with only the changed rows; decisions as they are made", async () => {
    const f = fleetOf(3);
    const activity = new RouteActivity();
    const registry = new Registry();
    const url = await serve({
      index: createIndex(),
      manager: f.manager,
      registry,
      activity,
      live: { intervalMs: 100, decisionFlushMs: 20 },
    });
    let changed = false;
    const evs = await readEvents(`${url}/admin/live`, (evs) => {
      if (!changed && evs.some((e) => e.event === "fleet")) {
        changed = true;
        f.statuses[1].state = "down";
        f.statuses[1].gaps = 2;
        activity.decided(planFor("p2", 32, 64));
      }
      const deltas = evs.filter((e) => e.event === "fleet-delta") as Array<{
        data: { upsert: Array<{ id: string }> };
      }>;
      return deltas.some((d) => d.data.upsert.length > 0) && evs.some((e) => e.event === "decisions");
    });
    assert.deepEqual(evs[0], { event: "hello", data: { intervalMs: 100, routing: true } });
    const snap = evs[1] as { event: string; data: { rows: Array<{ id: string; state: string }> } };
    assert.equal(snap.event, "fleet");
    assert.deepEqual(
      snap.data.rows.map((r) => [r.id, r.state]),
      [
        ["p0", "live"],
        ["p1", "live"],
        ["p2", "live"],
      ],
    );
    assert.equal(evs[2].event, "routing");
    const delta = evs.find(
      (e) => e.event === "fleet-delta" && (e.data as { upsert: unknown[] }).upsert.length > 0,
    ) as { data: { upsert: Array<{ id: string; state: string; gaps: number }>; remove: string[] } };
    // p1 changed; p0 and p2 did not (events/s stays 0: their counters did not move)
    assert.deepEqual(
      delta.data.upsert.map((r) => [r.id, r.state, r.gaps]),
      [["p1", "down", 2]],
    );
    const d = evs.find((e) => e.event === "decisions") as {
      data: Array<{ choice: { pod: string }; ranked: unknown[] }>;
    };
    assert.equal(d.data[0].choice.pod, "p2");
    assert.equal(d.data[0].ranked.length, 1);
    // the connection is gone: the gauge follows
    await waitFor(
      "the client gauge back to 0",
      async () => {
        const m = await registry.getSingleMetric("kvsync_admin_live_clients")!.get();
        return m.values[0]?.value === 0;
      },
      5_000,
    );
  });

  test("a client that does not read is dropped at its buffer bound and counted", async () => {
    const f = fleetOf(200);
    const registry = new Registry();
    const url = await serve({
      index: createIndex(),
      manager: f.manager,
      registry,
      live: { intervalMs: 20, maxBufferedBytes: 64 * 1024 },
    });
    // every row changes at every tick; the client never reads
    const churn = setInterval(() => {
      for (const s of f.statuses) s.eventsApplied += 1 + Math.floor(Math.random() * 100);
    }, 10);
    const req = request(`${url}/admin/live`);
    let closed = false;
    let response: IncomingMessage | null = null;
    req.on("response", (res) => {
      response = res;
      res.pause();
      res.on("close", () => {
        closed = true;
      });
    });
    req.on("error", () => {
      closed = true;
    });
    req.end();
    try {
      await waitFor(
        "the slow client dropped",
        async () => {
          const m = await registry.getSingleMetric("kvsync_admin_live_clients_dropped_total")!.get();
          return (m.values[0]?.value ?? 0) >= 1;
        },
        20_000,
      );
      // reading what was sent before the drop, the client reaches the end of the stream
      (response as IncomingMessage | null)?.resume();
      await waitFor("its connection closed", () => closed, 20_000);
    } finally {
      clearInterval(churn);
      req.destroy();
    }
  });

  test("the client cap answers 503; other methods 405; the page and its assets are served", async () => {
    const f = fleetOf(1);
    const url = await serve({
      index: createIndex(),
      manager: f.manager,
      registry: new Registry(),
      live: { maxClients: 1 },
    });
    const first = request(`${url}/admin/live`);
    const opened = new Promise((r) => first.on("response", r));
    first.end();
    await opened;
    try {
      const r = await fetch(`${url}/admin/live`);
      assert.equal(r.status, 503);
      assert.equal(((await r.json()) as { error: { code: string } }).error.code, "too_many_clients");
    } finally {
      first.destroy();
    }
    const post = await fetch(`${url}/admin/live`, { method: "POST" });
    assert.equal(post.status, 405);
    await post.text();
    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /text\/html/);
    assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self'/);
    assert.match(await page.text(), /<script src="\/dashboard\/app.js">/);
    for (const [path, type] of [
      ["/dashboard/app.js", /javascript/],
      ["/dashboard/uplot.js", /javascript/],
      ["/dashboard/uplot.css", /text\/css/],
      ["/dashboard/app.css", /text\/css/],
    ] as const) {
      const r = await fetch(`${url}${path}`);
      assert.equal(r.status, 200, path);
      assert.match(r.headers.get("content-type") ?? "", type);
      assert.ok((await r.text()).length > 100, path);
    }
    const missing = await fetch(`${url}/dashboard/nope.js`);
    assert.equal(missing.status, 404);
    await missing.text();
  });
});

describe("routing activity", () => {
  test("per-second buckets: requests per pod, predicted vs reported tokens, TTFT percentiles; bounded", () => {
    let now = 1_000_000;
    const a = new RouteActivity({ maxDecisions: 3, historySeconds: 5 }, () => now);
    a.decided(planFor("p0", 32, 64));
    a.decided(planFor("p1", 0, 64));
    a.firstByte(0.1);
    a.firstByte(0.3);
    a.usage(64, 32, 16);
    assert.deepEqual(a.series(), [], "the current second is not closed");
    now += 1000;
    a.decided(planFor("p0", 48, 64));
    now += 3000;
    const s = a.series();
    assert.deepEqual(
      s.map((p) => [p.t, p.pods, p.promptTokens, p.predictedTokens, p.cachedTokens, p.ttftP50, p.ttftP90]),
      [
        [1000, { p0: 1, p1: 1 }, 64, 32, 16, 0.3, 0.3],
        [1001, { p0: 1 }, 0, 0, 0, null, null],
        [1002, {}, 0, 0, 0, null, null],
        [1003, {}, 0, 0, 0, null, null],
      ],
    );
    assert.deepEqual(
      a.series(1001).map((p) => p.t),
      [1002, 1003],
    );
    now += 60_000;
    assert.equal(a.series().length, 5, "history bounded");
    a.decided(planFor("p2", 0, 16));
    a.decided(planFor("p2", 0, 16));
    assert.deepEqual(
      a.recent().map((d) => d.id),
      [3, 4, 5],
      "last decisions bounded",
    );
  });

  test("a retry updates its decision: the pod that answered, the first pick and why; listeners hear it again", () => {
    let now = 5_000_000;
    const a = new RouteActivity({}, () => now);
    const heard: Array<[number, string | undefined]> = [];
    a.onDecision((d) => heard.push([d.id, d.choice?.pod]));
    const plan = planFor("p0", 32, 64);
    a.decided(plan);
    a.retried(plan, { pod: "p1", rank: null }, "connect");
    assert.deepEqual(heard, [
      [1, "p0"],
      [1, "p1"],
    ]);
    const [d] = a.recent();
    assert.deepEqual(d!.choice, { pod: "p1", rank: null });
    assert.deepEqual(d!.retry, { from: { pod: "p0", rank: null }, reason: "connect" });
    assert.equal(d!.ranked[0]!.trust, 1);
    now += 1000;
    assert.deepEqual(a.series().at(-1)?.pods, { p1: 1 }, "the request counts for the pod that answered");
    // a plan never decided (a dry run) has nothing to update
    a.retried(planFor("p2", 0, 16), { pod: "p0", rank: null }, "connect");
    assert.equal(heard.length, 2);
  });
});
