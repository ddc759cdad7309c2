/**
 * The per-pod health signal with real `kvsync mock-engine` processes that are SIGSTOPped: no client
 * waits on a stopped pod longer than the configured bounds, new requests go to the healthy pod,
 * the pod returns after SIGCONT; and a long generation on a healthy pod is never cut.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { type RunningGateway, startGateway } from "../../../src/gateway/gateway.ts";
import { HEALTH_DEFAULTS } from "../../../src/gateway/health.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import {
  answers,
  type EngineProcess,
  engineRunning,
  startEngineProcess,
} from "../../helpers/engine-process.ts";
import { deadPort, fakePodInfo, type Json, MODEL, metricValue, post, startFakePod } from "./fleet.ts";

// the documented bound with the defaults: interval + 2 failed probes x timeout (3 s); the margin
// absorbs a shared, loaded test machine
const H = HEALTH_DEFAULTS;
const EJECT_MS = H.probeIntervalMs + H.unhealthyAfterProbes * H.probeTimeoutMs;
const MARGIN_MS = 3_000;
// ~12 ms per token at --speed 1 --step-ms 10
const ENGINE_ARGS = ["--speed", "1", "--step-ms", "10", "--num-gpu-blocks", "512"];

function captureLog(): { log: pino.Logger; events: Json[] } {
  const events: Json[] = [];
  const log = pino({ level: "info" }, { write: (s: string) => events.push(JSON.parse(s)) });
  return { log, events };
}

/** Read a streaming response to its end; the text and when it ended. */
async function drain(r: Response): Promise<{ text: string; endedAt: number }> {
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  return { text, endedAt: Date.now() };
}

function completion(body: Record<string, unknown>): Record<string, unknown> {
  return { model: MODEL, prompt: "tell me a story", ...body };
}

describe("SIGSTOPped engine processes", () => {
  let a: EngineProcess;
  let b: EngineProcess;
  let gw: RunningGateway;
  const cap = captureLog();
  before(async () => {
    [a, b] = await Promise.all([startEngineProcess(ENGINE_ARGS), startEngineProcess(ENGINE_ARGS)]);
    gw = await startGateway({
      pods: [fakePodInfo("pod-a", a.http), fakePodInfo("pod-b", b.http)],
      policy: "round-robin",
      subscribe: false,
      tokenizers: false,
      log: cap.log,
    });
  });
  after(async () => {
    await gw?.close();
    await Promise.all([a?.close(), b?.close()]);
  });

  test("in-flight requests end within the bound, new ones go to the healthy pod, SIGCONT brings it back", async (t) => {
    // round-robin: a long stream on pod-a, a short request on pod-b, a non-streaming one on pod-a
    const s = await fetch(`${gw.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(completion({ max_tokens: 3000, stream: true })),
    });
    assert.equal(s.headers.get("x-kvsync-pod"), "pod-a");
    const streamed = drain(s);
    assert.equal(
      (await post(`${gw.url}/v1/completions`, completion({ max_tokens: 2 }))).json.choices.length,
      1,
    );
    const tNs = Date.now();
    const nonStreaming = post(`${gw.url}/v1/completions`, completion({ max_tokens: 150 }));
    await waitFor(
      "pod-a runs the stream and the non-streaming request",
      async () => (await engineRunning(a.http)) === 2,
    );

    const t0 = Date.now();
    a.stop();
    // the fault took effect: the engine no longer answers its health endpoint
    assert.equal(await answers(`${a.http}/health`, 500), false, "a stopped engine must not answer");

    // the stream ends with an OpenAI error event (the pod stopped answering: a timeout)
    const st = await streamed;
    t.diagnostic(`stream cut ${st.endedAt - t0} ms after SIGSTOP`);
    assert.ok(st.endedAt - t0 < EJECT_MS + MARGIN_MS, `stream ended ${st.endedAt - t0} ms after SIGSTOP`);
    const last = st.text.trim().split("\n\n").pop()!;
    assert.match(last, /^data: \{"error":/);
    assert.equal(JSON.parse(last.slice(6)).error.code, "upstream_timeout");

    // the non-streaming request had sent the client nothing: retried on pod-b, answered there
    const ns = await nonStreaming;
    const nsMs = Date.now() - t0;
    t.diagnostic(`non-streaming answered ${nsMs} ms after SIGSTOP (${Date.now() - tNs} ms in all)`);
    assert.equal(ns.status, 200, ns.text);
    assert.equal(ns.headers.get("x-kvsync-pod"), "pod-b");
    assert.equal(ns.json.usage.completion_tokens, 150);
    // its own generation on pod-b (~2 s) comes on top of the ejection bound
    assert.ok(nsMs < EJECT_MS + 4_000 + MARGIN_MS, `non-streaming took ${nsMs} ms after SIGSTOP`);
    assert.equal(
      await metricValue(gw, "kvsync_gateway_upstream_retries_total", { reason: "pod_unhealthy" }),
      1,
    );
    assert.ok(
      (await metricValue(gw, "kvsync_gateway_upstream_aborts_total", { reason: "pod_unhealthy" })) >= 2,
    );

    // pod-a is out of rotation: new requests all go to pod-b, promptly
    assert.equal(await metricValue(gw, "kvsync_gateway_pod_healthy", { pod: "pod-a" }), 0);
    assert.equal(await metricValue(gw, "kvsync_gateway_pod_healthy", { pod: "pod-b" }), 1);
    assert.equal(await metricValue(gw, "kvsync_gateway_pod_ejections_total", { reason: "probe_timeout" }), 1);
    const unhealthy = cap.events.find((e) => e.event === "gateway.pod_unhealthy");
    assert.equal(unhealthy?.pod, "pod-a");
    assert.equal(unhealthy?.reason, "probe_timeout");
    t.diagnostic(`pod-a out of rotation ${unhealthy.time - t0} ms after SIGSTOP`);
    assert.ok(unhealthy.time - t0 < EJECT_MS + MARGIN_MS);
    for (let i = 0; i < 4; i++) {
      const t1 = Date.now();
      const r = await post(`${gw.url}/v1/completions`, completion({ max_tokens: 2 }));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get("x-kvsync-pod"), "pod-b");
      assert.ok(Date.now() - t1 < 2_000, `request took ${Date.now() - t1} ms`);
    }
    const pods = (await (await fetch(`${gw.adminUrl}/admin/pods`)).json()) as Json[];
    assert.deepEqual(
      pods.map((p) => [p.name, p.healthy, p.healthReason]),
      [
        ["pod-a", false, "probe_timeout"],
        ["pod-b", true, null],
      ],
    );
    const ex = await post(`${gw.adminUrl}/admin/route/explain`, { model: MODEL, prompt: "x" });
    assert.deepEqual(
      ex.json.candidates.map((c: Json) => [c.pod, c.healthy]),
      [["pod-b", true]],
    );
    assert.deepEqual(
      ex.json.outOfRotation.map((o: Json) => [o.pod, o.reason]),
      [["pod-a", "probe_timeout"]],
    );

    // SIGCONT: the next answered probe puts pod-a back, and traffic reaches it again
    const t2 = Date.now();
    a.resume();
    await waitFor(
      "pod-a back in rotation",
      async () => (await metricValue(gw, "kvsync_gateway_pod_healthy", { pod: "pod-a" })) === 1,
      H.probeIntervalMs + H.probeTimeoutMs + MARGIN_MS,
    );
    t.diagnostic(`pod-a back ${Date.now() - t2} ms after SIGCONT`);
    const healthy = cap.events.find((e) => e.event === "gateway.pod_healthy");
    assert.equal(healthy?.pod, "pod-a");
    assert.equal(healthy?.was, "probe_timeout");
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await post(`${gw.url}/v1/completions`, completion({ max_tokens: 2 }));
      assert.equal(r.status, 200, r.text);
      seen.add(String(r.headers.get("x-kvsync-pod")));
    }
    assert.deepEqual([...seen].sort(), ["pod-a", "pod-b"]);
  });

  test("every pod stopped → an OpenAI 503 at once, never a hang", async () => {
    a.stop();
    b.stop();
    try {
      assert.equal(await answers(`${b.http}/health`, 500), false, "a stopped engine must not answer");
      await waitFor(
        "both pods out of rotation",
        async () => (await metricValue(gw, "kvsync_gateway_pod_healthy")) === 0,
        EJECT_MS + MARGIN_MS,
      );
      const t0 = Date.now();
      const r = await post(`${gw.url}/v1/chat/completions`, {
        model: MODEL,
        messages: [{ role: "user", content: "hi" }],
      });
      assert.ok(Date.now() - t0 < 1_000, `503 took ${Date.now() - t0} ms`);
      assert.equal(r.status, 503);
      assert.equal(r.json.error.code, "no_healthy_pod");
      assert.equal(r.json.error.type, "service_unavailable");
    } finally {
      a.resume();
      b.resume();
    }
    await waitFor(
      "both pods back",
      async () => (await metricValue(gw, "kvsync_gateway_pod_healthy")) === 2,
      H.probeIntervalMs + H.probeTimeoutMs + MARGIN_MS,
    );
  });

  test("a generation longer than the first-byte timeout on a healthy pod is not cut", async () => {
    const short = await startGateway({
      pods: [fakePodInfo("pod-a", a.http)],
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      firstByteTimeoutMs: 500,
      log: silentLogger(),
    });
    try {
      let t0 = Date.now();
      const ns = await post(`${short.url}/v1/completions`, completion({ max_tokens: 150 }));
      assert.equal(ns.status, 200, ns.text);
      assert.equal(ns.json.usage.completion_tokens, 150);
      assert.ok(Date.now() - t0 > 1_000, "the generation outlasted the first-byte timeout");
      t0 = Date.now();
      const s = await fetch(`${short.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(completion({ max_tokens: 150, stream: true })),
      });
      const { text } = await drain(s);
      assert.ok(Date.now() - t0 > 1_000, "the stream outlasted the first-byte timeout");
      assert.ok(text.trimEnd().endsWith("data: [DONE]"), text.slice(-300));
      assert.doesNotMatch(text, /"error"/);
      assert.equal(await metricValue(short, "kvsync_gateway_upstream_aborts_total"), 0);
    } finally {
      await short.close();
    }
  });
});

describe("health signal with scripted pods", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test("a stream whose headers do not come within the first-byte timeout → 504; non-streaming waits", async () => {
    // answers /health (the fixture does) but never a completion's headers
    const mute = await startFakePod((req) => req.resume());
    cleanups.push(() => mute.close());
    const gw = await startGateway({
      pods: [fakePodInfo("mute", mute.url)],
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      firstByteTimeoutMs: 400,
      headersTimeoutMs: 1_500,
      log: silentLogger(),
    });
    cleanups.push(() => gw.close());
    let t0 = Date.now();
    const s = await post(`${gw.url}/v1/completions`, completion({ stream: true }));
    const streamMs = Date.now() - t0;
    assert.equal(s.status, 504);
    assert.equal(s.json.error.code, "upstream_timeout");
    // which timeout fired is the metric's reason below, not a wall-clock bound (a loaded machine
    // can deliver the 504 after the headers timeout would have passed)
    assert.ok(streamMs >= 350, `first-byte timeout after ${streamMs} ms`);
    assert.equal(
      await metricValue(gw, "kvsync_gateway_upstream_aborts_total", { reason: "first_byte_timeout" }),
      1,
    );
    t0 = Date.now();
    const ns = await post(`${gw.url}/v1/completions`, completion({}));
    assert.equal(ns.status, 504);
    assert.ok(Date.now() - t0 >= 1_400, "non-streaming requests keep the headers timeout");
  });

  test("a stream paused by its own client is not cut when its pod goes out of rotation", async () => {
    // the pod streams more than the pipes hold; the client stops reading, so the relay stops
    // reading the pod: the pod's silence on this request is the client's doing, not the pod's
    const chunk = `data: ${JSON.stringify({ choices: [{ index: 0, text: "y".repeat(16_000) }] })}\n\n`;
    const total = 2000;
    const state = { written: 0, blocked: false, done: false, healthy: true };
    const pod = await startFakePod(
      async (req, res) => {
        req.resume();
        res.writeHead(200, { "content-type": "text/event-stream" });
        for (let i = 0; i < total; i++) {
          if (!res.write(chunk)) {
            state.blocked = true;
            const closed = await new Promise<boolean>((r) => {
              res.once("drain", () => r(false));
              res.once("close", () => r(true));
            });
            state.blocked = false;
            if (closed) return;
          }
          state.written++;
        }
        res.end("data: [DONE]\n\n");
        state.done = true;
      },
      () => state.healthy,
    );
    cleanups.push(() => pod.close());
    const gw = await startGateway({
      pods: [fakePodInfo("p", pod.url)],
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      health: { probeIntervalMs: 200, probeTimeoutMs: 200 },
      log: silentLogger(),
    });
    cleanups.push(() => gw.close());
    const r = await fetch(`${gw.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify(completion({ stream: true })),
    });
    assert.equal(r.status, 200);
    const reader = r.body!.getReader();
    await reader.read();
    await waitFor("the pod blocked on a full pipe", () => state.blocked, 10_000);
    // the pod's probes fail: out of rotation; the sweeps of the next ticks (each well past the
    // silence bound of one probe period) pass over the paused request
    state.healthy = false;
    const health = gw.core.health!;
    await waitFor("the pod out of rotation", () => health.status("p")?.healthy === false, 10_000);
    await waitFor(
      "four more failed probes (sweeps) while out",
      () => health.status("p")!.probeFailures >= 6,
      10_000,
    );
    assert.equal(state.blocked, true, "the client still reads nothing");
    let bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.length;
    }
    assert.ok(state.done, `pod wrote ${state.written} of ${total}`);
    assert.ok(bytes >= (total - state.written) * chunk.length);
    assert.equal(
      await metricValue(gw, "kvsync_gateway_upstream_aborts_total", { reason: "pod_unhealthy" }),
      0,
    );
  });

  test("request failures take a pod out; removed pods are forgotten", async () => {
    // probes pass, completions reset: only the passive signal can take this pod out
    const resets = await startFakePod((req) => req.socket.destroy());
    const good = await startFakePod((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
    });
    cleanups.push(
      () => resets.close(),
      () => good.close(),
    );
    const cap = captureLog();
    const gw = await startGateway({
      pods: [fakePodInfo("a-resets", resets.url), fakePodInfo("b-good", good.url)],
      policy: "round-robin",
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      // no probe tick during the test: what takes the pod out is the requests
      health: { probeIntervalMs: 60_000 },
      log: cap.log,
    });
    cleanups.push(() => gw.close());
    await waitFor("first probes answered", () =>
      gw.core.health!.snapshot().every((h) => h.lastProbeOk !== null),
    );
    for (let i = 0; i < 8; i++) {
      const r = await post(`${gw.url}/v1/completions`, completion({}));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get("x-kvsync-pod"), "b-good");
    }
    // round-robin sent a-resets every other request until its third reset; each was retried
    assert.equal(resets.requests, H.unhealthyAfterFailures);
    assert.equal(await metricValue(gw, "kvsync_gateway_pod_ejections_total", { reason: "reset" }), 1);
    assert.equal(gw.core.health!.status("a-resets")?.healthy, false);
    const ev = cap.events.find((e) => e.event === "gateway.pod_unhealthy");
    assert.deepEqual([ev?.pod, ev?.reason, ev?.requestFailures], ["a-resets", "reset", 3]);

    // a removed pod leaves no state and no gauge series behind
    gw.pods.apply({ type: "sync", pods: [fakePodInfo("b-good", good.url)] });
    assert.deepEqual(
      gw.core.health!.snapshot().map((h) => h.pod),
      ["b-good"],
    );
    assert.equal(await metricValue(gw, "kvsync_gateway_pod_healthy", { pod: "a-resets" }), 0);
    assert.doesNotMatch(await gw.registry.metrics(), /kvsync_gateway_pod_healthy\{pod="a-resets"\}/);
  });

  test("a pod that refuses connections is out at once and a retry never picks it", async () => {
    const good = await startFakePod((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
    });
    cleanups.push(() => good.close());
    const gw = await startGateway({
      pods: [fakePodInfo("a-dead", `http://127.0.0.1:${await deadPort()}`), fakePodInfo("b-good", good.url)],
      policy: "round-robin",
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      log: silentLogger(),
    });
    cleanups.push(() => gw.close());
    // refused probes fail at once, and a failed probe is confirmed at once
    await waitFor("a-dead out of rotation", () => gw.core.health!.isHealthy("a-dead") === false, 2_000);
    assert.equal(gw.core.health!.status("a-dead")?.reason, "probe_error");
    for (let i = 0; i < 3; i++) {
      const r = await post(`${gw.url}/v1/completions`, completion({}));
      assert.equal(r.headers.get("x-kvsync-pod"), "b-good");
    }
    assert.equal(await metricValue(gw, "kvsync_gateway_upstream_retries_total"), 0);
  });
});
