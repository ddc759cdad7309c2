/**
 * Gateway benchmark (not a test), in one run against the same mock engines:
 *  - requests/s and latency p50/p99 of a fixed-concurrency closed loop (undici, bounded in count
 *    and time) calling (a) the engines directly (client-side rotation), (b) through the kvsync
 *    gateway (`kv-aware`, tokenization and KV-event subscribers included), (c) through nginx as a
 *    plain reverse proxy (Debian's nginx-light, installed with apt-get when missing, run with a
 *    generated config on loopback). Ratios and added latency are against (a).
 *  - routing decision time p50/p99 (match + scoring, no tokenization) of `kv-aware` for 8k-token
 *    prompts over 100 pods, against a sync index populated with realistic claims (shared tenant
 *    system prompts on many pods, long conversations on one pod each).
 * Engines (4 replicas in one process) and the gateway run as child processes (`kvsync
 * mock-engine`, `kvsync gateway`), so the load generator does not share their event loop.
 * Ends with one JSON line `{"bench":"gateway",...}`, also written to bench/results/gateway.json.
 *
 *   npm run bench:gateway       (KVSYNC_BENCH_QUICK=1: shorter load phases;
 *                                KVSYNC_BENCH_CPU_PROF=<dir>: the gateway's CPU profile, see docs/performance.md)
 * A change against another revision: `npm run bench:gateway:ab -- --base <rev>` (bench/ab/gateway-ab.ts).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { createIndex } from "../src/index/index.ts";
import { hashFromInt } from "../src/protocol/index.ts";
import { createPolicy, LoadTracker } from "../src/routing/index.ts";
import {
  BODIES,
  CONCURRENCY,
  cleanup,
  combine,
  type LoadResult,
  log,
  MODEL,
  measurePhases,
  REQUEST,
  ROOT,
  round,
  startEngines,
  startGateway,
} from "./gateway-load.ts";
import { stageBench } from "./gateway-stages.ts";
import { startNginx } from "./nginx.ts";
import { routingBench } from "./routing-decision.ts";

const QUICK = process.env.KVSYNC_BENCH_QUICK === "1";
/** KVSYNC_BENCH_CPU_PROF=<dir>: the gateway runs with --cpu-prof and writes its profile there on exit */
const PROF_DIR = process.env.KVSYNC_BENCH_CPU_PROF ?? "";
const ENGINES = 4;
const MAX_REQUESTS = QUICK ? 3000 : 15_000;
const MAX_MS = QUICK ? 10_000 : 30_000;
const WARMUP = QUICK ? 500 : 1500;
const ROUNDS = 5;

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const started = performance.now();
  const loadStart = loadavg()[0];
  log(
    `gateway bench: ${ENGINES} mock engines, concurrency ${CONCURRENCY}, <= ${MAX_REQUESTS} requests / ${MAX_MS / 1000} s per target`,
  );
  const cli = join(ROOT, "src", "cli.ts");
  const fleet = await startEngines(cli, ENGINES);
  const direct = fleet.direct;
  const gw = await startGateway(cli, fleet, PROF_DIR ? ["--cpu-prof", "--cpu-prof-dir", PROF_DIR] : []);
  const gwUrl = gw.url;
  const nginx = await startNginx(direct);
  log(`  engines ${direct.join(" ")}; gateway ${gwUrl}; ${nginx.version} ${nginx.url}`);

  const phases = await measurePhases(
    [
      { name: "direct", origins: direct, pids: [] },
      { name: "gateway", origins: [gwUrl], pids: [gw.pid] },
      { name: "nginx", origins: [nginx.url], pids: [nginx.pid] },
    ],
    { rounds: ROUNDS, warmup: WARMUP, maxRequests: MAX_REQUESTS, maxMs: MAX_MS },
  );
  const res = new Map([...phases].map(([n, ps]) => [n, combine(ps)]));
  const rDirect = res.get("direct")!;
  const rGateway = res.get("gateway")!;
  const rNginx = res.get("nginx")!;
  await cleanup();

  log("  routing decisions: populating the index (100 pods)...");
  const routing = routingBench({ createIndex, createPolicy, LoadTracker, hashFromInt }, QUICK ? 1000 : 3000);
  log(
    `  routing kv-aware, ${routing.promptTokens}-token prompts over ${routing.pods} pods ` +
      `(${routing.indexEntries} index entries): p50 ${routing.p50Us} us, p99 ${routing.p99Us} us wall; ` +
      `CPU p50 ${routing.cpuP50Us} us, p99 ${routing.cpuP99Us} us; own cost (per-prompt medians) ` +
      `p50 ${routing.workP50Us} us, p99 ${routing.workP99Us} us; ${routing.allocBytes} B allocated per decision, ` +
      `${routing.gcDecisions} decisions ran a GC (${routing.gcShareOfSlowest} of the slowest 1 %)`,
  );

  log("  request stages in process (CPU per request)...");
  const stages = await stageBench(MODEL, BODIES, QUICK ? 1000 : 4000);
  log(
    `  stages, us: body parse ${stages.bodyParseUs}, render ${stages.renderUs} ` +
      `(interpreted ${stages.renderInterpretedUs}, direct share ${stages.renderDirectShare}), tokenize ${stages.tokenizeUs}, ` +
      `match ${stages.matchUs}, score ${stages.scoreUs}, usage parse ${stages.usageParseUs} (total ${stages.totalUs}; ` +
      `the gateway's CPU per request beyond this is the HTTP server and client)`,
  );

  const added = (x: LoadResult) => ({
    p50Ms: round(x.p50Ms - rDirect.p50Ms, 3),
    p99Ms: round(x.p99Ms - rDirect.p99Ms, 3),
  });
  const ratios = (x: LoadResult) => ({
    rps: round(x.rps / rDirect.rps, 3),
    p50: round(x.p50Ms / rDirect.p50Ms, 3),
    p99: round(x.p99Ms / rDirect.p99Ms, 3),
  });
  const out = {
    bench: "gateway",
    quick: QUICK,
    node: process.version,
    nginxVersion: nginx.version.replace(/^nginx version: /, ""),
    engines: ENGINES,
    concurrency: CONCURRENCY,
    request: REQUEST,
    direct: rDirect,
    gateway: { ...rGateway, addedLatency: added(rGateway), vsDirect: ratios(rGateway) },
    nginx: { ...rNginx, addedLatency: added(rNginx), vsDirect: ratios(rNginx) },
    gatewayVsNginx: {
      rps: round(rGateway.rps / rNginx.rps, 3),
      p50: round(rGateway.p50Ms / rNginx.p50Ms, 3),
      cpuPerRequest:
        rGateway.cpuUsPerRequest !== null && rNginx.cpuUsPerRequest
          ? round(rGateway.cpuUsPerRequest / rNginx.cpuUsPerRequest, 2)
          : null,
    },
    /** 1-minute load average at the start and the end: the machine is shared */
    loadAvg: { start: round(loadStart, 2), end: round(loadavg()[0], 2) },
    routingDecision: routing,
    /** the gateway's own stages for one bench request, CPU us (gateway-stages.ts) */
    stages,
    seconds: round((performance.now() - started) / 1000, 1),
  };
  log("");
  log("target    req/s   vs direct   p50 ms   +p50 ms   p99 ms   +p99 ms   CPU us/req");
  for (const [name, x] of [
    ["direct", rDirect],
    ["gateway", rGateway],
    ["nginx", rNginx],
  ] as const) {
    log(
      `${name.padEnd(8)} ${x.rps.toFixed(0).padStart(6)} ${(x.rps / rDirect.rps).toFixed(2).padStart(10)}x ` +
        `${x.p50Ms.toFixed(2).padStart(8)} ${(x.p50Ms - rDirect.p50Ms).toFixed(2).padStart(9)} ` +
        `${x.p99Ms.toFixed(2).padStart(8)} ${(x.p99Ms - rDirect.p99Ms).toFixed(2).padStart(9)} ` +
        `${String(x.cpuUsPerRequest ?? "-").padStart(12)}`,
    );
  }
  const line = JSON.stringify(out);
  const file = join(ROOT, "bench", "results", "gateway.json");
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${line}\n`);
  process.stdout.write(`${line}\n`);
}

try {
  await main();
} catch (err) {
  log(`gateway bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
