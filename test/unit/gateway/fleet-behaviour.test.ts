/**
 * Candidate selection and proxy behaviour: data-parallel ranks, LoRA adapters, a down stream's
 * cache not attracting traffic, engine metrics scraping, SSE backpressure, and the CLI with its
 * env-var twins.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { parseMetrics } from "../../helpers/metrics.ts";
import {
  deadPort,
  fakePodInfo,
  type Json,
  MODEL,
  metricValue,
  post,
  startFakePod,
  startFleet,
} from "./fleet.ts";

const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const okBody = JSON.stringify({
  id: "x",
  object: "text_completion",
  created: 1,
  model: MODEL,
  choices: [{ index: 0, text: "ok", finish_reason: "length", logprobs: null }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
});

describe("candidates", () => {
  test("data-parallel pods: one candidate per rank, X-data-parallel-rank upstream", async () => {
    const ranks: string[] = [];
    const pod = await startFakePod((req, res) => {
      ranks.push(String(req.headers["x-data-parallel-rank"]));
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(okBody));
    });
    cleanups.push(() => pod.close());
    const gw = await startGateway({
      pods: [fakePodInfo("dp", pod.url, { dataParallelSize: 2 })],
      subscribe: false,
      tokenizers: false,
      log: silentLogger(),
      policy: "round-robin",
    });
    cleanups.push(() => gw.close());
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "x" });
      assert.equal(r.status, 200);
      seen.add(`${r.headers.get("x-kvsync-pod")}#${r.headers.get("x-kvsync-rank")}`);
    }
    assert.deepEqual([...seen].sort(), ["dp#0", "dp#1"]);
    assert.deepEqual(ranks, ["0", "1", "0", "1"]);
    const ex = await post(`${gw.adminUrl}/admin/route/explain`, { model: MODEL, token_ids: [1, 2, 3] });
    assert.deepEqual(ex.json.candidates.map((c: Json) => c.streamId).sort(), ["dp#0", "dp#1"]);
  });

  test("LoRA adapters: only pods serving the adapter, matched in the adapter's namespace", async () => {
    const a = await startFakePod((_req, res) => res.end());
    cleanups.push(() => a.close());
    const gw = await startGateway({
      pods: [
        fakePodInfo("base-only", a.url),
        fakePodInfo("with-lora", a.url, { loras: ["sql-lora"] }),
        fakePodInfo("lora-not-ready", a.url, { loras: ["sql-lora"], ready: false }),
      ],
      subscribe: false,
      tokenizers: false,
      log: silentLogger(),
    });
    cleanups.push(() => gw.close());
    const ex = await post(`${gw.adminUrl}/admin/route/explain`, { model: "sql-lora", token_ids: [1, 2, 3] });
    assert.equal(ex.status, 200, ex.text);
    assert.equal(ex.json.lora, "sql-lora");
    assert.deepEqual(
      ex.json.candidates.map((c: Json) => c.pod),
      ["with-lora"],
    );
    const viaLora = await post(`${gw.adminUrl}/admin/route/explain`, {
      model: MODEL,
      lora: "sql-lora",
      token_ids: [1, 2, 3],
    });
    assert.equal(viaLora.json.lora, "sql-lora");
    assert.equal(viaLora.json.model, "sql-lora");
    const base = await post(`${gw.adminUrl}/admin/route/explain`, { model: MODEL, token_ids: [1, 2, 3] });
    assert.equal(base.json.lora, null);
    assert.equal(base.json.candidates.length, 2);
  });
});

describe("with mock engines", () => {
  test("a down stream's cached blocks stop attracting traffic", async () => {
    const f = await startFleet(2);
    cleanups.push(() => f.close());
    const prompt = Array.from({ length: 100 }, (_, i) => `stale${i}`).join(" ");
    const r0 = await post(`${f.engines[1]!.httpUrl}/v1/completions`, { model: MODEL, prompt, max_tokens: 1 });
    assert.equal(r0.status, 200);
    const body = { model: MODEL, prompt: `${prompt} tail` };
    const pod1 = async () =>
      (await post(`${f.gw.adminUrl}/admin/route/explain`, body)).json.candidates.find(
        (c: Json) => c.pod === "pod-1",
      );
    await waitFor("pod-1's prefix indexed", async () => (await pod1()).matchedTokens > 0);
    assert.equal((await post(`${f.gw.adminUrl}/admin/route/explain`, body)).json.choice.pod, "pod-1");
    // the engine goes away (its stream is no longer live), discovery still lists it as ready
    await f.engines[1]!.close();
    await waitFor("pod-1's stream no longer live", async () => (await pod1()).live === false);
    const ex = await post(`${f.gw.adminUrl}/admin/route/explain`, body);
    const [c0, c1] = ["pod-0", "pod-1"].map((p) => ex.json.candidates.find((c: Json) => c.pod === p));
    assert.equal(c1.matchedTokens, 0);
    assert.equal(c1.savedTokens, 0);
    assert.equal(c1.score, c0.score, "no cache advantage left for pod-1");
    // a request still gets served (pod-1 refuses the connection: retried on pod-0 if chosen)
    const r = await post(`${f.gw.url}/v1/completions`, { ...body, max_tokens: 1 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get("x-kvsync-pod"), "pod-0");
  });

  test("prefix-approx without events: follow-up turns go back to the pod that has the conversation", async () => {
    const f = await startFleet(3, { policy: "prefix-approx", subscribe: false });
    cleanups.push(() => f.close());
    const convs = Array.from({ length: 3 }, (_, c) =>
      Array.from({ length: 80 }, (_, i) => `conversation${c} token${i}`).join(" "),
    );
    const first: string[] = [];
    for (const conv of convs) {
      const r = await post(`${f.gw.url}/v1/chat/completions`, {
        model: MODEL,
        messages: [{ role: "user", content: conv }],
        max_tokens: 2,
      });
      assert.equal(r.status, 200, r.text);
      first.push(r.headers.get("x-kvsync-pod")!);
    }
    assert.equal(new Set(first).size, 3, `distinct conversations spread: ${first}`);
    for (const [i, conv] of convs.entries()) {
      const r = await post(`${f.gw.url}/v1/chat/completions`, {
        model: MODEL,
        messages: [
          { role: "user", content: conv },
          { role: "assistant", content: "ok" },
          { role: "user", content: "and then?" },
        ],
        max_tokens: 2,
      });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get("x-kvsync-pod"), first[i], `turn 2 of conversation ${i}`);
      assert.ok(Number(r.headers.get("x-kvsync-matched-tokens")) > 0);
      assert.ok(
        r.json.usage.prompt_tokens_details.cached_tokens > 0,
        "the engine reused the conversation's cache",
      );
    }
  });

  test("remote tokenizer (engine /tokenize) and token-id prompts route on the same tokens as the engine", async () => {
    const f = await startFleet(2, { tokenizers: [`${MODEL}=remote`] });
    cleanups.push(() => f.close());
    const messages = [
      { role: "user", content: "remote tokenization check, with some unicode: naïve café 日本語" },
    ];
    const ex = await post(`${f.gw.adminUrl}/admin/route/explain`, { model: MODEL, messages });
    assert.equal(ex.status, 200, ex.text);
    assert.equal(ex.json.tokenized, true);
    const r = await post(`${f.gw.url}/v1/chat/completions`, { model: MODEL, messages, max_tokens: 1 });
    assert.equal(r.status, 200, r.text);
    assert.equal(ex.json.promptTokens, r.json.usage.prompt_tokens, "same token count as the engine");

    // a token-id prompt is routed on exactly those ids
    const ids = Array.from({ length: 70 }, (_, i) => 1000 + i);
    const direct = await post(`${f.engines[1]!.httpUrl}/v1/completions`, {
      model: MODEL,
      prompt: ids,
      max_tokens: 1,
    });
    assert.equal(direct.status, 200, direct.text);
    const body = { model: MODEL, prompt: [...ids, 5, 6, 7], max_tokens: 1 };
    await waitFor("token-id prefix indexed on pod-1", async () => {
      const e = await post(`${f.gw.adminUrl}/admin/route/explain`, { model: MODEL, token_ids: body.prompt });
      return e.json.choice?.pod === "pod-1" && e.json.candidates[0].matchedTokens === 64;
    });
    const routed = await post(`${f.gw.url}/v1/completions`, body);
    assert.equal(routed.status, 200, routed.text);
    assert.equal(routed.headers.get("x-kvsync-pod"), "pod-1");
    assert.equal(routed.headers.get("x-kvsync-matched-tokens"), "64");
    assert.equal(routed.json.usage.prompt_tokens_details.cached_tokens, 64);
  });

  test("a pod removed from discovery stops getting traffic and leaves /v1/models", async () => {
    const f = await startFleet(2);
    cleanups.push(() => f.close());
    f.gw.pods.apply({ type: "upsert", pod: { ...f.pods[1]!, model: "other/model" } });
    const models = async () =>
      ((await (await fetch(`${f.gw.url}/v1/models`)).json()) as Json).data.map((m: Json) => m.id).sort();
    assert.deepEqual(await models(), [MODEL, "other/model"].sort());
    f.gw.pods.apply({ type: "delete", name: "pod-1" });
    assert.deepEqual(await models(), [MODEL]);
    const gone = await post(`${f.gw.url}/v1/completions`, { model: "other/model", prompt: "x" });
    assert.equal(gone.status, 404);
    for (let i = 0; i < 4; i++) {
      const r = await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: `x${i}`, max_tokens: 1 });
      assert.equal(r.headers.get("x-kvsync-pod"), "pod-0");
    }
  });

  test("--scrape-engine-metrics feeds engines' queue and KV usage into the load", async () => {
    const f = await startFleet(2, { scrapeEngineMetrics: true, scrapeIntervalMs: 100 });
    cleanups.push(() => f.close());
    await waitFor(
      "both engines scraped",
      async () =>
        (await metricValue(f.gw, "kvsync_gateway_engine_metrics_scrapes_total", { result: "ok" })) >= 2,
    );
    const ex = await post(`${f.gw.adminUrl}/admin/route/explain`, { model: MODEL, token_ids: [1, 2, 3] });
    for (const c of ex.json.candidates) {
      assert.equal(typeof c.load.engineRunning, "number");
      assert.equal(typeof c.load.engineWaiting, "number");
      assert.equal(typeof c.load.kvUsage, "number");
    }
  });
});

describe("proxy", () => {
  test("SSE is relayed with backpressure: a client that does not read stalls the pod", async () => {
    const chunk = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "y".repeat(16_000) } }] })}\n\n`;
    const total = 4000; // ~64 MB if nothing pushed back
    const state = { written: 0, blocked: false, done: false };
    const pod = await startFakePod(async (req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (let i = 0; i < total; i++) {
        if (!res.write(chunk)) {
          state.blocked = true;
          const ac = new AbortController();
          const closed = await Promise.race([
            once(res, "drain", { signal: ac.signal }).then(() => false),
            once(res, "close", { signal: ac.signal }).then(() => true),
          ]).finally(() => ac.abort());
          state.blocked = false;
          if (closed) return;
        }
        state.written++;
      }
      res.end("data: [DONE]\n\n");
      state.done = true;
    });
    cleanups.push(() => pod.close());
    const gw = await startGateway({
      pods: [fakePodInfo("p", pod.url)],
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      log: silentLogger(),
    });
    cleanups.push(() => gw.close());
    const r = await fetch(`${gw.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: MODEL,
        prompt: "x",
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const reader = r.body!.getReader();
    await reader.read();
    // the client reads nothing more: the pod must block well before writing everything
    await waitFor("the pod blocked on a full pipe", () => state.blocked, 10_000);
    const stalledAt = state.written;
    assert.ok(stalledAt < total / 2, `pod wrote ${stalledAt} of ${total} chunks without a reader`);
    // now read everything: the stream completes
    let bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.length;
    }
    assert.ok(state.done);
    assert.ok(bytes >= (total - stalledAt - 1) * chunk.length);
  });

  test("kvsync gateway CLI: env-var twins configure it; SIGTERM stops it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-gw-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const pod = await startFakePod((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(okBody));
    });
    cleanups.push(() => pod.close());
    const engines = join(dir, "engines.yaml");
    writeFileSync(
      engines,
      `engines:\n  - name: cli-pod\n    model: ${MODEL}\n    http: ${pod.url}\n    events: null\n`,
    );
    const [port, adminPort] = [await deadPort(), await deadPort()];
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "src/cli.ts", "gateway", "--host", "127.0.0.1"],
      {
        env: {
          ...process.env,
          KVSYNC_ENGINES: engines,
          KVSYNC_PORT: String(port),
          KVSYNC_ADMIN_PORT: String(adminPort),
          KVSYNC_POLICY: "least-request",
          KVSYNC_LOG_LEVEL: "warn",
          KVSYNC_INDEX_INITIAL_ENTRIES: "200000",
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    const exited = once(child, "exit");
    cleanups.push(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    await waitFor("gateway CLI started", () => out.includes('"url"') || child.exitCode !== null, 30_000);
    assert.ok(out.includes('"url"'), `gateway CLI exited ${child.exitCode}: ${err.slice(-1000)}`);
    const info = JSON.parse(out.trim().split("\n")[0]!);
    assert.equal(info.url, `http://127.0.0.1:${port}`);
    assert.equal(info.policy, "least-request");
    const r = await post(`${info.url}/v1/completions`, { model: MODEL, prompt: "x" });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get("x-kvsync-pod"), "cli-pod");
    assert.equal(r.headers.get("x-kvsync-policy"), "least-request");
    const health = await fetch(`http://127.0.0.1:${adminPort}/healthz`);
    assert.equal(health.status, 200);
    // --index-initial-entries: the embedded index holds 200k entry and block records from the start
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const bytes = Number(parseMetrics(metrics).get("kvsync_index_bytes"));
    assert.ok(bytes >= 200_000 * 48, `kvsync_index_bytes ${bytes}`);
    child.kill("SIGTERM");
    const [code] = await exited;
    assert.equal(code, 0);
  });
});
