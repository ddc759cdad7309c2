/**
 * `kvsync demo`: the workload generator, the report, a tiny real run (mock engines + gateway,
 * kv-aware vs round-robin on the same seed) and the CLI end to end (env twins, --json, exit 0).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { formatTable, type RequestOutcome, summarize } from "../../../src/demo/report.ts";
import { type DemoResult, runDemo } from "../../../src/demo/run.ts";
import { generateWorkload } from "../../../src/demo/workload.ts";
import { percentile } from "../../../src/util/stats.ts";

const SMALL = {
  systemPromptWords: 220,
  minTurns: 3,
  maxTurns: 4,
  minUserWords: 10,
  maxUserWords: 30,
  minReplyTokens: 8,
  maxReplyTokens: 16,
};

describe("workload", () => {
  test("same seed, same workload; turns add up to the requests; tenants share their system prompt", () => {
    const a = generateWorkload({ seed: 7, requests: 53 });
    const b = generateWorkload({ seed: 7, requests: 53 });
    assert.deepEqual(a, b);
    const c = generateWorkload({ seed: 8, requests: 53 });
    assert.notDeepEqual(a.conversations, c.conversations);
    assert.equal(
      a.conversations.reduce((n, x) => n + x.turns.length, 0),
      53,
    );
    assert.equal(a.tenants.length, 4);
    assert.equal(new Set(a.tenants).size, 4, "tenants' system prompts differ");
    for (const conv of a.conversations) {
      assert.equal(conv.system, a.tenants[conv.tenant]);
      assert.ok(conv.turns.length >= 1 && conv.turns.length <= 10);
      for (const t of conv.turns) assert.ok(t.maxTokens >= 32 && t.maxTokens <= 128);
    }
    // several conversations per tenant: that is where the shared prefix comes from
    const perTenant = new Map<number, number>();
    for (const conv of a.conversations) perTenant.set(conv.tenant, (perTenant.get(conv.tenant) ?? 0) + 1);
    assert.ok([...perTenant.values()].some((n) => n >= 2));
    // a long system prompt: ~700 words
    assert.ok(a.tenants[0].split(" ").length > 600);
  });

  test("bad shapes are clear errors", () => {
    assert.throws(() => generateWorkload({ seed: 1, requests: 0 }), /requests must be an integer >= 1/);
    assert.throws(() => generateWorkload({ seed: 1, requests: 5, minTurns: 3, maxTurns: 2 }), /maxTurns/);
    assert.throws(() => generateWorkload({ seed: 1.5, requests: 5 }), /seed must be an integer/);
  });
});

describe("report", () => {
  test("percentiles, hit rate, per-pod counts and the table", () => {
    assert.equal(percentile([5, 1, 4, 2, 3], 0.5), 3);
    assert.equal(percentile([5, 1, 4, 2, 3], 0.9), 5);
    assert.ok(Number.isNaN(percentile([], 0.5)));
    const o = (pod: string, ttft: number, prompt: number, cached: number, ok = true): RequestOutcome => ({
      ok,
      status: ok ? 200 : 502,
      pod,
      ttftMs: ok ? ttft : null,
      latencyMs: ttft * 2,
      promptTokens: prompt,
      cachedTokens: cached,
      content: "x",
    });
    const r = summarize(
      "kv-aware",
      ["pod-0", "pod-1", "pod-2"],
      [
        o("pod-0", 10, 100, 50),
        o("pod-0", 30, 100, 100),
        o("pod-1", 20, 200, 0),
        o("pod-1", 99, 1, 1, false),
      ],
      2,
      1.5,
    );
    assert.equal(r.requests, 3);
    assert.equal(r.errors, 3, "one failed + two skipped");
    assert.equal(r.hitRate, 150 / 400);
    assert.equal(r.ttftP50Ms, 20);
    assert.equal(r.ttftP90Ms, 30);
    assert.deepEqual(r.perPod, { "pod-0": 2, "pod-1": 1, "pod-2": 0 });
    assert.equal(r.requestsPerSecond, 2);
    const rr = { ...r, policy: "round-robin", hitRate: 0.1, ttftP50Ms: 40, ttftP90Ms: 60 };
    const table = formatTable([r, rr]).split("\n");
    assert.match(table[0], /^policy\s+requests\s+errors\s+prefix hit rate\s+TTFT p50\s+TTFT p90/);
    assert.match(table[2], /^kv-aware\s+3\s+3\s+37\.5 %\s+20 ms\s+30 ms\s+2\.0\s+pod-0:2 pod-1:1 pod-2:0$/);
    assert.match(table[3], /^round-robin\s+3\s+3\s+10\.0 %\s+40 ms\s+60 ms/);
    assert.match(table.at(-1)!, /TTFT p50 2\.00x lower, p90 2\.00x lower/);
  });
});

function checkResult(r: DemoResult, requests: number): void {
  assert.deepEqual(
    r.results.map((x) => x.policy),
    ["kv-aware", "round-robin"],
  );
  for (const x of r.results) {
    assert.equal(x.errors, 0, `${x.policy}: errors`);
    assert.equal(x.requests, requests, `${x.policy}: requests`);
    const sum = Object.values(x.perPod).reduce((a, b) => a + b, 0);
    assert.equal(sum, requests, `${x.policy}: requests per pod add up`);
    assert.equal(Object.keys(x.perPod).length, r.options.engines);
    assert.ok(x.promptTokens > requests * 200, `${x.policy}: prompt tokens ${x.promptTokens}`);
    assert.ok(x.cachedTokens <= x.promptTokens);
    assert.ok(Number.isFinite(x.ttftP50Ms) && x.ttftP50Ms > 0, `${x.policy}: ttft p50 ${x.ttftP50Ms}`);
    assert.ok(x.ttftP90Ms >= x.ttftP50Ms);
  }
  const [kv, rr] = r.results;
  assert.ok(kv.hitRate > 0, "kv-aware reuses the shared prefixes");
  assert.ok(
    kv.hitRate >= rr.hitRate,
    `kv-aware hit rate ${kv.hitRate} must be >= round-robin's ${rr.hitRate} on the same seed`,
  );
  // round-robin spreads strictly evenly
  const counts = Object.values(rr.perPod);
  assert.ok(Math.max(...counts) - Math.min(...counts) <= 1, `round-robin per pod ${counts}`);
}

describe("demo run", () => {
  test("tiny demo: kv-aware vs round-robin on the same seed, fresh fleets, real usage figures", async () => {
    const lines: string[] = [];
    const r = await runDemo({
      requests: 24,
      concurrency: 4,
      engines: 3,
      seed: 3,
      speed: 8,
      gpuBlocks: 256,
      tokenizerPool: false,
      progressEvery: 6,
      workload: SMALL,
      progress: (l) => lines.push(l),
    });
    checkResult(r, 24);
    assert.equal(r.options.engines, 3);
    assert.equal(r.options.conversations >= 6, true);
    // progress: a start line and a line every 6 requests per policy
    for (const p of ["kv-aware", "round-robin"]) {
      assert.ok(lines.some((l) => l.startsWith(`[${p}] starting 3 mock engines`)));
      const prog = lines.filter((l) => l.startsWith(`[${p}] `) && l.includes("/24 requests"));
      assert.deepEqual(
        prog.map((l) => Number(/(\d+)\/24 requests/.exec(l)![1])),
        [6, 12, 18, 24],
      );
    }
  });

  test("CLI: env twins, --json, table on stdout, the dashboard during --keep, exits 0 by itself (everything cleaned up)", async () => {
    const cli = fileURLToPath(new URL("../../../src/cli.ts", import.meta.url));
    const child = spawn(process.execPath, ["--import", "tsx", cli, "demo", "--json", "--engines", "2"], {
      env: {
        ...process.env,
        KVSYNC_DEMO_REQUESTS: "10",
        KVSYNC_DEMO_CONCURRENCY: "3",
        KVSYNC_DEMO_SEED: "5",
        KVSYNC_DEMO_SPEED: "10",
        KVSYNC_DEMO_GPU_BLOCKS: "512",
        KVSYNC_DEMO_PROGRESS_EVERY: "5",
        KVSYNC_DEMO_KEEP: "3",
        // the default (silent) logger: the console shows progress lines only
        KVSYNC_LOG_LEVEL: undefined,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    // while the fleet is kept up, the printed dashboard URL serves the page and the fleet
    let served: Promise<{ page: number; pods: number }> | null = null;
    child.stderr.on("data", (d) => {
      err += d;
      const url = /dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(err)?.[1];
      if (served === null && url && err.includes("[keep] kv-aware fleet up")) {
        served = (async () => {
          const page = await fetch(url);
          await page.text();
          const pods = (await (await fetch(`${url}admin/pods`)).json()) as unknown[];
          return { page: page.status, pods: pods.length };
        })();
      }
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    clearTimeout(timer);
    assert.equal(code, 0, `exit code; stderr:\n${err}`);
    assert.match(out, /policy\s+requests\s+errors\s+prefix hit rate/);
    assert.match(out, /^kv-aware\s+10\s+0\s/m);
    assert.match(out, /^round-robin\s+10\s+0\s/m);
    assert.match(err, /\[kv-aware\] 10\/10 requests/);
    assert.match(err, /^dashboard: http:\/\/127\.0\.0\.1:\d+\//m);
    assert.match(err, /\[keep\] done/);
    assert.ok(served, "the keep phase was seen");
    assert.deepEqual(await served, { page: 200, pods: 2 });
    // a progress view: no raw JSON log lines
    for (const line of err.split("\n")) assert.ok(!line.startsWith("{"), `log line on the console: ${line}`);
    const jsonLine = out
      .trim()
      .split("\n")
      .find((l) => l.startsWith("{"));
    assert.ok(jsonLine, "a JSON line");
    const r = JSON.parse(jsonLine!) as DemoResult;
    assert.equal(r.options.seed, 5);
    assert.equal(r.options.concurrency, 3);
    assert.equal(r.options.engines, 2);
    checkResult(r, 10);
  });
});
