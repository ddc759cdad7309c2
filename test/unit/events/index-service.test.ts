import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type IndexService, startIndexService } from "../../../src/commands/index-service.ts";
import { blockStored } from "../../../src/protocol/build.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { hashFromInt } from "../../../src/protocol/hash.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { parseMetrics } from "../../helpers/metrics.ts";
import { complete, engineTruth, startTestEngine, type TestEngine, writeEngines } from "./engines.ts";
import { FakePublisher } from "./fake-publisher.ts";

const MODEL = "Qwen/Qwen3-0.6B";

describe("kvsync index: admin API over real engines", () => {
  let dir: string;
  let a: TestEngine;
  let dp: TestEngine;
  let svc: IndexService;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "kvsync-index-"));
    a = await startTestEngine("pod-a", { hashSeed: "a", numGpuBlocks: 64, speed: 50 });
    dp = await startTestEngine("ns/pod-dp", {
      hashSeed: "d",
      numGpuBlocks: 64,
      speed: 50,
      dataParallelSize: 2,
    });
    writeEngines(join(dir, "engines.json"), [a, dp]);
    svc = await startIndexService({
      discovery: { engines: join(dir, "engines.json"), debounceMs: 20 },
      adminPort: 0,
      log: silentLogger(),
      subscriber: { replayTimeoutMs: 2000, tailCheckMs: 500 },
    });
  });
  after(async () => {
    await svc?.close();
    await a?.running?.close();
    await dp?.running?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const get = async (path: string) => {
    const r = await fetch(`${svc.url}${path}`);
    return {
      status: r.status,
      body: r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text(),
    };
  };
  const post = async (path: string, body: string) => {
    const r = await fetch(`${svc.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    return { status: r.status, body: await r.json() };
  };
  const adminBlocks = async (name: string, rank?: number) => {
    const r = await get(
      `/admin/pods/${encodeURIComponent(name)}/blocks${rank === undefined ? "" : `?rank=${rank}`}`,
    );
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return (r.body as { blocks: Array<{ hash: string; tiers: string[] }> }).blocks
      .map((b) => ({ hash: b.hash, tiers: [...b.tiers].sort() }))
      .sort((x, y) => (x.hash < y.hash ? -1 : x.hash > y.hash ? 1 : 0));
  };
  const converged = async (e: TestEngine, rank?: number) => {
    let last: unknown;
    const deadline = Date.now() + 10_000;
    for (;;) {
      const [mine, truth] = await Promise.all([adminBlocks(e.name, rank), engineTruth(e, rank)]);
      if (JSON.stringify(mine) === JSON.stringify(truth)) return mine;
      last = { mine, truth };
      if (Date.now() > deadline) assert.fail(`index != engine for ${e.name}: ${JSON.stringify(last)}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  it("health, readiness and /admin/pods (one entry per stream, DP ranks apart)", async () => {
    const health = await get("/healthz");
    assert.equal(health.status, 200);
    assert.equal((health.body as { status: string }).status, "ok");
    assert.equal(
      typeof (health.body as { eventLoopDelayMs: { maxMs: number } }).eventLoopDelayMs.maxMs,
      "number",
    );
    await waitFor(
      "3 live streams",
      () => svc.manager.statuses().filter((s) => s.state === "live").length === 3,
      { timeoutMs: 10_000, describe: () => svc.manager.statuses() },
    );
    assert.deepEqual(await get("/readyz"), {
      status: 200,
      body: { status: "ready", discovery: true, pods: 2, streams: { live: 3, waiting: [], gaveUp: [] } },
    });
    const pods = (await get("/admin/pods")).body as Array<Record<string, unknown>>;
    assert.deepEqual(
      pods.map((p) => [p.name, p.rank, p.stream, p.model, p.state]),
      [
        ["ns/pod-dp", 0, "ns/pod-dp#0", MODEL, "live"],
        ["ns/pod-dp", 1, "ns/pod-dp#1", MODEL, "live"],
        ["pod-a", null, "pod-a", MODEL, "live"],
      ],
    );
    for (const p of pods) {
      for (const k of [
        "lora",
        "lastSeq",
        "eventsApplied",
        "blocks",
        "decodeErrors",
        "gaps",
        "replays",
        "resyncs",
      ]) {
        assert.ok(k in p, `field ${k}`);
      }
    }
  });

  it("blocks equal the engine's /debug/kv-cache; match by token_ids and by prompt", async () => {
    const prompt = Array.from({ length: 50 }, (_, i) => 1000 + i);
    assert.equal((await complete(a, prompt)).status, 200);
    const text = "The quick brown fox jumps over the lazy dog. ".repeat(6);
    const r = await complete(a, text);
    assert.equal(r.status, 200);
    await a.running?.engine.quiesce();
    const blocks = await converged(a);
    assert.ok(blocks.length >= 3, `blocks cached: ${blocks.length}`);
    const pods = (await get("/admin/pods")).body as Array<{
      stream: string;
      blocks: number;
      eventsApplied: number;
    }>;
    assert.equal(pods.find((p) => p.stream === "pod-a")?.blocks, blocks.length);

    const m = await post("/admin/index/match", JSON.stringify({ model: MODEL, token_ids: prompt }));
    assert.equal(m.status, 200);
    assert.deepEqual(m.body, {
      blockSize: 16,
      tokens: 50,
      pods: [
        {
          pod: "pod-a",
          rank: null,
          stream: "pod-a",
          blockSize: 16,
          matchedBlocks: 3,
          matchedTokens: 48,
          tiers: { GPU: 3, CPU: 0, STORAGE: 0 },
        },
      ],
    });
    const byPrompt = await post("/admin/index/match", JSON.stringify({ model: MODEL, prompt: text }));
    assert.equal(byPrompt.status, 200, JSON.stringify(byPrompt.body));
    const promptTokens = r.body.usage?.prompt_tokens as number;
    assert.equal(byPrompt.body.tokens, promptTokens);
    assert.equal(byPrompt.body.pods[0].matchedBlocks, Math.floor(promptTokens / 16));
    // other namespace: nothing
    const lora = await post(
      "/admin/index/match",
      JSON.stringify({ model: MODEL, lora: "x", token_ids: prompt }),
    );
    assert.deepEqual(lora.body.pods, []);
  });

  it("DP ranks: each rank's blocks equal that rank's cache", async () => {
    const h = { "content-type": "application/json", "X-data-parallel-rank": "1" };
    const res = await fetch(`${dp.url}/v1/completions`, {
      method: "POST",
      headers: h,
      body: JSON.stringify({
        model: MODEL,
        prompt: Array.from({ length: 40 }, (_, i) => 7000 + i),
        max_tokens: 2,
      }),
    });
    assert.equal(res.status, 200);
    await dp.running?.engine.quiesce();
    const r1 = await converged(dp, 1);
    const r0 = await converged(dp, 0);
    assert.ok(r1.length >= 2);
    assert.equal(r0.length, 0);
    const all = (await get(`/admin/pods/${encodeURIComponent("ns/pod-dp")}/blocks`)).body as {
      blocks: Array<{ rank: number }>;
    };
    assert.ok(all.blocks.length === r1.length && all.blocks.every((b) => b.rank === 1));
    // ranks a pod does not have: 404; a single-rank pod's one stream is its rank 0
    assert.equal((await get(`/admin/pods/${encodeURIComponent("ns/pod-dp")}/blocks?rank=2`)).status, 404);
    assert.equal((await get(`/admin/pods/${encodeURIComponent(a.name)}/blocks?rank=1`)).status, 404);
    assert.equal((await get(`/admin/pods/${encodeURIComponent(a.name)}/blocks?rank=0`)).status, 200);
  });

  it("errors: bad JSON and bad fields → 400 OpenAI-style, unknown pod → 404, wrong method → 405", async () => {
    const bad = await post("/admin/index/match", "{not json");
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.type, "invalid_request_error");
    assert.equal(bad.body.error.code, "invalid_json");
    assert.equal(typeof bad.body.error.message, "string");
    assert.ok("param" in bad.body.error);
    const noInput = await post("/admin/index/match", JSON.stringify({ model: MODEL }));
    assert.equal(noInput.status, 400);
    const badIds = await post("/admin/index/match", JSON.stringify({ model: MODEL, token_ids: [1, "x"] }));
    assert.equal(badIds.status, 400);
    assert.equal(badIds.body.error.param, "token_ids");
    const noTok = await post("/admin/index/match", JSON.stringify({ model: "no/such-model", prompt: "hi" }));
    assert.equal(noTok.status, 400);
    assert.equal(noTok.body.error.code, "no_tokenizer");
    const unknown = await get("/admin/pods/nope/blocks");
    assert.equal(unknown.status, 404);
    assert.equal((unknown.body as { error: { type: string } }).error.type, "invalid_request_error");
    const r = await fetch(`${svc.url}/admin/index/match`);
    assert.equal(r.status, 405);
    assert.equal((await fetch(`${svc.url}/nowhere`)).status, 404);
  });

  it("/metrics exposes what the docs promise; extra routes can be registered", async () => {
    const text = (await get("/metrics")).body as string;
    for (const name of [
      "kvsync_subscriber_events_applied_total",
      "kvsync_subscriber_decode_errors_total",
      "kvsync_subscriber_gaps_total",
      "kvsync_subscriber_replays_total",
      "kvsync_subscriber_resyncs_total",
      "kvsync_subscriber_restarts_total",
      'kvsync_subscriber_streams{state="live"} 3',
      "kvsync_index_entries",
      "kvsync_index_bytes",
      "kvsync_index_evictions_total",
      "kvsync_index_apply_duration_seconds_bucket",
    ]) {
      assert.ok(text.includes(name), `metrics lack ${name}`);
    }
    assert.match(text, /kvsync_subscriber_events_applied_total\{stream="pod-a"\} [1-9]/);
    // live batches were timed from the engine's batch timestamp to their application
    assert.match(text, /kvsync_subscriber_event_lag_seconds_count [1-9]/);
    svc.admin.route("POST", "/admin/route/explain", (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ explained: true }));
    });
    const ex = await post("/admin/route/explain", "{}");
    assert.deepEqual(ex, { status: 200, body: { explained: true } });
  });
});

describe("kvsync index (child process)", () => {
  it("serves the admin API for the engines file, follows a publisher, stops on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-index-cli-"));
    const pub = await new FakePublisher().start();
    const file = join(dir, "engines.yaml");
    writeFileSync(
      file,
      `engines:\n  - name: pod-y\n    model: m\n    http: http://127.0.0.1:1\n    events: ${pub.pubEndpoint}\n    replay: ${pub.replayEndpoint}\n`,
    );
    const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", "index", "--engines", file], {
      cwd: join(import.meta.dirname, "../../.."),
      stdio: ["ignore", "pipe", "pipe"],
      // flags' env twins
      env: {
        ...process.env,
        KVSYNC_ADMIN_PORT: "0",
        KVSYNC_ADMIN_HOST: "127.0.0.1",
        KVSYNC_LOG_LEVEL: "warn",
        // room for 200k entries up front: pages and tables are allocated at start
        KVSYNC_INDEX_INITIAL_ENTRIES: "200000",
      },
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    after(async () => {
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
      await pub.close();
      rmSync(dir, { recursive: true, force: true });
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      out += c;
    });
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      err += c;
    });
    await waitFor("the started line", () => out.includes("\n"), {
      timeoutMs: 20_000,
      describe: () => ({ out, err }),
    });
    const { url } = JSON.parse(out.split("\n")[0]) as { url: string };
    await pub.waitSubscribed(1, 10_000);
    const podState = async () =>
      ((await (await fetch(`${url}/admin/pods`)).json()) as Array<{ state: string }>)[0]?.state;
    const deadline = Date.now() + 10_000;
    while ((await podState()) !== "live") {
      if (Date.now() > deadline) assert.fail(`pod-y never live: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await pub.publish(
      0,
      encodeBatch(
        {
          ts: 1,
          events: [
            blockStored(
              [hashFromInt(77)],
              null,
              Array.from({ length: 16 }, (_, i) => i),
              16,
              { medium: "CPU" },
            ),
          ],
          dpRank: 0,
        },
        "2025-09",
      ),
    );
    let blocks: unknown = null;
    const d2 = Date.now() + 10_000;
    while (JSON.stringify(blocks) !== JSON.stringify({ blocks: [{ hash: "77", tiers: ["CPU"] }] })) {
      if (Date.now() > d2) assert.fail(`blocks: ${JSON.stringify(blocks)}`);
      blocks = await (await fetch(`${url}/admin/pods/pod-y/blocks`)).json();
    }
    // --index-initial-entries: 200k entry (32 B) and block (16 B) records held from the start
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const bytes = Number(parseMetrics(metrics).get("kvsync_index_bytes"));
    assert.ok(bytes >= 200_000 * 48, `kvsync_index_bytes ${bytes}`);
    child.kill("SIGTERM");
    assert.equal(await exited, 0);
  });
});
