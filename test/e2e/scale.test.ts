import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, it } from "node:test";
import { seededRandom } from "../../src/util/rng.ts";
import { percentile } from "../../src/util/stats.ts";
import { parseMetrics } from "../helpers/metrics.ts";
import { DEFAULT_MODEL, type Pod, REPO_ROOT } from "./harness/cluster.ts";
import { LagSampler } from "./harness/lag.ts";
import { completeDirect, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { compareAllWithTruth } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { loadTrace, prefix, prompt, tracePrompt } from "./harness/workload.ts";

// 10, 50 and 100 pods (10 engines per process, one namespace per process, one address per pod)
// under a closed-loop workload through the gateway. Measures events applied per second, the
// event-to-index lag, gateway requests per second and the time for the index to converge to
// every engine's truth once load stops.
const SIZES = [10, 50, 100];
const PER_PROCESS = 10;
const LOAD_MS = Number(process.env.KVSYNC_E2E_SCALE_LOAD_MS ?? 8000);
const CONCURRENCY = 16;
/** the light phase: one request at a time, this long a pause after each, for LIGHT_MS */
const LIGHT_MS = 3000;
const LIGHT_PAUSE_MS = 40;
/** a test run writes its figures to an ignored folder; `npm run bench:e2e-scale` points this at bench/results */
const RESULTS_DIR = process.env.KVSYNC_RESULTS_DIR ?? "test-results";
/** trace prompts are cut at this many blocks (~30 tokens each) */
const MAX_TRACE_BLOCKS = 48;
/** workload: the Mooncake conversation trace's prefix structure (block 0 shared by every request) */
const TRACE = loadTrace(join(REPO_ROOT, "test/fixtures/traces/mooncake_conversation_2000.jsonl"), 2000);

interface Row {
  pods: number;
  requests: number;
  errors: number;
  requestsPerSec: number;
  eventsApplied: number;
  eventsPerSec: number;
  /** event-to-index lag, batch ts → applied at the gateway (sampled via ZMQ + /admin/pods), ms */
  lagP50Ms: number;
  lagP99Ms: number;
  lagSamples: number;
  /** the same from the gateway's own lag histogram (kvsync_subscriber_event_lag_seconds), under load */
  metricLagP50Ms: number | null;
  metricLagP99Ms: number | null;
  /**
   * the gateway's lag histogram under light load after the loaded phase (one request at a time
   * with pauses: the gateway is not CPU-starved, unless the machine is), and its sample count
   */
  lightLagP50Ms: number | null;
  lightLagP99Ms: number | null;
  lightLagSamples: number;
  /** end-to-end probe: engine answered → prefix matchable at the gateway, ms */
  probeLagP50Ms: number;
  probeLagP99Ms: number;
  convergeMs: number;
  indexBlocks: number;
  /** engine-reported cached prompt tokens / prompt tokens, % */
  hitPct: number;
  /** pods that served at least one request / most requests served by one pod */
  podsUsed: number;
  maxPodShare: number;
}

/** Quantile from a Prometheus histogram's cumulative buckets (delta between two scrapes). */
function histogramQuantile(
  before: Map<string, number>,
  after: Map<string, number>,
  name: string,
  q: number,
): number | null {
  const buckets = new Map<number, number>();
  for (const [k, v] of after) {
    if (!k.startsWith(`${name}_bucket{`)) continue;
    const le = k.match(/le="([^"]+)"/)?.[1];
    if (!le) continue;
    const bound = le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le);
    buckets.set(bound, (buckets.get(bound) ?? 0) + v - (before.get(k) ?? 0));
  }
  if (buckets.size === 0) return null;
  const sorted = [...buckets.entries()].sort((a, b) => a[0] - b[0]);
  const total = sorted[sorted.length - 1][1];
  if (!(total > 0)) return null;
  let prevBound = 0;
  let prevCount = 0;
  for (const [bound, count] of sorted) {
    if (count >= q * total) {
      if (!Number.isFinite(bound)) return prevBound;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevBound + ((bound - prevBound) * (q * total - prevCount)) / inBucket : bound;
    }
    prevBound = bound;
    prevCount = count;
  }
  return prevBound;
}

/** The lag histogram the gateway exports (name contains "lag", unit seconds), if any. */
function lagMetricName(m: Map<string, number>): string | null {
  for (const k of m.keys()) {
    const name = k.match(/^([a-z_:]*lag[a-z_:]*_seconds)_bucket\{/)?.[1];
    if (name) return name;
  }
  return null;
}

describe("e2e large scale: 10, 50, 100 pods", { timeout: scaled(420_000) }, () => {
  const cluster = useCluster();
  const rows: Row[] = [];
  let pods: Pod[] = [];

  for (const size of SIZES) {
    it(`${size} pods under load: index converges to every pod's truth`, {
      timeout: scaled(200_000),
    }, async () => {
      const c = cluster();
      const gw = gatewayOf(c);
      const t0 = Date.now();
      const names: string[] = [];
      for (let i = pods.length; i < size; i++) names.push(`engine-${String(i).padStart(3, "0")}`);
      pods = pods.concat(await c.createPods(names, { engine: { numGpuBlocks: 1024 } }, PER_PROCESS));
      await waitLive(gw, pods, 60_000);
      const setupMs = Date.now() - t0;

      // warm-up (not measured): the gateway's first tokenization and match of this size's pods
      await gw.match(DEFAULT_MODEL, prompt(prefix(`warm${size}`, 1), 1));
      await completeDirect(pods[pods.length - 1], prompt(prefix(`warm${size}`, 1), 1));
      const sumApplied = async () => (await gw.pods()).reduce((s, p) => s + (p.eventsApplied ?? 0), 0);
      const m0 = parseMetrics(await gw.metrics());
      const applied0 = await sumApplied();
      const sampled = [0, 1, 2, 3, 4].map((k) => pods[Math.floor((k * pods.length) / 5)]);
      const lag = new LagSampler(gw, sampled);
      lag.start();
      // declared here, measured inside the try (the sampler's sockets close on every path)
      let requests = 0;
      let errors = 0;
      let promptTokens = 0;
      let cachedTokens = 0;
      let loadMs = 0;
      let convergeMs = 0;
      const served = new Map<string, number>();
      const errorSamples: string[] = [];
      const probeLags: number[] = [];
      try {
        const r = seededRandom(size);
        let cursor = 0;
        const start = performance.now();
        const deadline = start + LOAD_MS;
        const client = async (id: number) => {
          let k = 0;
          while (performance.now() < deadline) {
            // the next request of the trace (shared cursor: clients take requests in trace order)
            const ids = TRACE[cursor++ % TRACE.length].slice(0, MAX_TRACE_BLOCKS);
            const res = await gw
              .complete(DEFAULT_MODEL, `${tracePrompt(ids)}\n#${size}-${id}-${k++}`, 8)
              .catch((err: Error) => ({
                status: -1,
                body: err.message,
                pod: null,
                promptTokens: 0,
                cachedTokens: 0,
              }));
            requests++;
            if (res.status === 200 && res.pod) {
              served.set(res.pod, (served.get(res.pod) ?? 0) + 1);
              promptTokens += res.promptTokens;
              cachedTokens += res.cachedTokens;
            } else {
              errors++;
              if (errorSamples.length < 3)
                errorSamples.push(`${res.status} ${JSON.stringify(res.body).slice(0, 150)}`);
            }
          }
        };
        // probe: a fresh prefix straight into one engine, then poll the gateway until it matches
        const prober = async () => {
          let k = 0;
          while (performance.now() < deadline) {
            const pod = pods[Math.floor(r() * pods.length)];
            const text = prompt(prefix(`probe${size}-${k}`, 70_000 + k, 40), k);
            k++;
            await completeDirect(pod, text, DEFAULT_MODEL, 1);
            const answered = performance.now();
            await waitFor(
              `probe ${k} indexed under ${pod.name}`,
              async () => {
                const m = await gw.match(DEFAULT_MODEL, text);
                return m.pods.some((x) => x.pod === pod.name && x.matchedBlocks > 0) ? true : "not yet";
              },
              { timeoutMs: scaled(20_000), intervalMs: 5 },
            );
            probeLags.push(performance.now() - answered);
          }
        };
        await Promise.all([...Array.from({ length: CONCURRENCY }, (_, i) => client(i)), prober()]);
        loadMs = performance.now() - start;
        // load stopped: time until the index equals the truth of every pod
        const t1 = performance.now();
        await waitFor(
          `index == engine truth for all ${size} pods after load`,
          () => compareAllWithTruth(gw, pods),
          {
            timeoutMs: scaled(60_000),
            intervalMs: 50,
          },
        );
        convergeMs = performance.now() - t1;
        await lag.stop();
      } finally {
        await lag.close();
      }
      const m1 = parseMetrics(await gw.metrics());
      const applied1 = await sumApplied();
      const lagName = lagMetricName(m1);
      const q = (a: Map<string, number>, b: Map<string, number>, x: number) =>
        lagName ? histogramQuantile(a, b, lagName, x) : null;
      const p50 = q(m0, m1, 0.5);
      const p99 = q(m0, m1, 0.99);
      // light load: the lag the gateway adds when it has CPU to spare (one request at a time)
      const lightEnd = performance.now() + LIGHT_MS;
      let k = 0;
      while (performance.now() < lightEnd) {
        const ids = TRACE[k % TRACE.length].slice(0, MAX_TRACE_BLOCKS);
        const res = await gw.complete(DEFAULT_MODEL, `${tracePrompt(ids)}\n#light${size}-${k++}`, 8);
        assert.equal(
          res.status,
          200,
          `light-phase request failed: ${JSON.stringify(res.body).slice(0, 200)}`,
        );
        await new Promise((r) => setTimeout(r, LIGHT_PAUSE_MS));
      }
      // the last request's batch is applied a moment after its answer: wait for the count to settle
      // (compared across scrapes at least 150 ms apart)
      await new Promise((r) => setTimeout(r, 150));
      let m2 = parseMetrics(await gw.metrics());
      const lightCount = () =>
        lagName ? (m2.get(`${lagName}_count`) ?? 0) - (m1.get(`${lagName}_count`) ?? 0) : 0;
      // (a light phase whose prompts stored no new full block has no sample: its figures are null)
      await waitFor(
        "the light phase's batches counted in the lag histogram (the count steady)",
        async () => {
          const before = lightCount();
          m2 = parseMetrics(await gw.metrics());
          return lightCount() === before;
        },
        { timeoutMs: scaled(10_000), intervalMs: 150 },
      );
      const lp50 = lightCount() > 0 ? q(m1, m2, 0.5) : null;
      const lp99 = lightCount() > 0 ? q(m1, m2, 0.99) : null;
      const indexBlocks = (await gw.pods()).reduce((s, p) => s + (p.blocks ?? 0), 0);
      const row: Row = {
        pods: size,
        requests,
        errors,
        requestsPerSec: Math.round((requests / loadMs) * 1000),
        eventsApplied: applied1 - applied0,
        eventsPerSec: Math.round(((applied1 - applied0) / (loadMs + convergeMs)) * 1000),
        lagP50Ms: Math.round(percentile(lag.lagsMs, 0.5)),
        lagP99Ms: Math.round(percentile(lag.lagsMs, 0.99)),
        lagSamples: lag.lagsMs.length,
        metricLagP50Ms: p50 === null ? null : Math.round(p50 * 10000) / 10,
        metricLagP99Ms: p99 === null ? null : Math.round(p99 * 10000) / 10,
        lightLagP50Ms: lp50 === null ? null : Math.round(lp50 * 10000) / 10,
        lightLagP99Ms: lp99 === null ? null : Math.round(lp99 * 10000) / 10,
        lightLagSamples: lightCount(),
        probeLagP50Ms: Math.round(percentile(probeLags, 0.5)),
        probeLagP99Ms: Math.round(percentile(probeLags, 0.99)),
        convergeMs: Math.round(convergeMs),
        indexBlocks,
        hitPct: Math.round((1000 * cachedTokens) / Math.max(1, promptTokens)) / 10,
        podsUsed: served.size,
        maxPodShare: Math.round((1000 * Math.max(0, ...served.values())) / Math.max(1, requests)) / 10,
      };
      rows.push(row);
      process.stdout.write(
        `# scale ${size}: setup ${setupMs} ms, load ${Math.round(loadMs)} ms, ${JSON.stringify(row)}\n`,
      );
      assert.equal(errors, 0, `${errors}/${requests} requests failed: ${errorSamples.join(" | ")}`);
      assert.ok(requests > 0 && row.eventsApplied > 0, "no load went through");
      for (const name of served.keys()) assert.ok(c.pods.has(name), `request served by unknown pod ${name}`);
      assert.ok(probeLags.length > 0, "no lag probe completed");
      assert.ok(lag.lagsMs.length > 0, "no event batch of the sampled pods was seen applied");
      assert.equal(lag.unapplied(), 0, `${lag.unapplied()} published batches never applied at the gateway`);
    });
  }

  it("prints the scale table and writes e2e-scale.json to the results folder", () => {
    assert.equal(rows.length, SIZES.length, "a size did not complete");
    const cols: Array<[string, (r: Row) => string]> = [
      ["pods", (r) => String(r.pods)],
      ["req/s", (r) => String(r.requestsPerSec)],
      ["events/s", (r) => String(r.eventsPerSec)],
      ["lag p50 ms", (r) => String(r.lagP50Ms)],
      ["lag p99 ms", (r) => String(r.lagP99Ms)],
      // the gateway's own histogram (batch stamp to applied): under load, and under light load
      ["hist lag p99 ms", (r) => String(r.metricLagP99Ms ?? "-")],
      ["light lag p50 ms", (r) => String(r.lightLagP50Ms ?? "-")],
      ["light lag p99 ms", (r) => String(r.lightLagP99Ms ?? "-")],
      ["probe p50 ms", (r) => String(r.probeLagP50Ms)],
      ["probe p99 ms", (r) => String(r.probeLagP99Ms)],
      ["converge ms", (r) => String(r.convergeMs)],
      ["requests", (r) => String(r.requests)],
      ["hit %", (r) => String(r.hitPct)],
      ["pods used", (r) => String(r.podsUsed)],
      ["blocks", (r) => String(r.indexBlocks)],
    ];
    const widths = cols.map(([h, f]) => Math.max(h.length, ...rows.map((r) => f(r).length)));
    const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(widths[i])).join(" | ")} |`;
    const table = [
      line(cols.map(([h]) => h)),
      `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`,
      ...rows.map((r) => line(cols.map(([, f]) => f(r)))),
    ].join("\n");
    process.stdout.write(`\n${table}\n\n`);
    const result = {
      bench: "e2e-scale",
      loadMs: LOAD_MS,
      concurrency: CONCURRENCY,
      enginesPerProcess: PER_PROCESS,
      rows,
    };
    const dir = resolve(REPO_ROOT, RESULTS_DIR);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "e2e-scale.json"), `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  });
});
