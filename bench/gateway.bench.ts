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
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { createIndex } from "../src/index/index.ts";
import { hashFromInt } from "../src/protocol/index.ts";
import { createPolicy, LoadTracker } from "../src/routing/index.ts";
import { freePort } from "../src/util/free-port.ts";
import { percentileSorted } from "../src/util/stats.ts";
import { waitFor } from "../src/util/wait.ts";
import { stageBench } from "./gateway-stages.ts";
import { routingBench } from "./routing-decision.ts";

const QUICK = process.env.KVSYNC_BENCH_QUICK === "1";
/** KVSYNC_BENCH_CPU_PROF=<dir>: the gateway runs with --cpu-prof and writes its profile there on exit */
const PROF_DIR = process.env.KVSYNC_BENCH_CPU_PROF ?? "";
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/**
 * KVSYNC_BENCH_BASELINE=<dir>: another checkout of kvsync (e.g. `git archive main | tar -x`, with
 * a node_modules link) whose gateway runs as one more target, "baseline", in the same run: an
 * A/B of a change against the same engines, nginx and machine load.
 */
const BASELINE_ROOT = process.env.KVSYNC_BENCH_BASELINE ?? "";
const MODEL = "Qwen/Qwen3-0.6B";
const ENGINES = 4;
const CONCURRENCY = 16;
const MAX_REQUESTS = QUICK ? 3000 : 15_000;
const MAX_MS = QUICK ? 10_000 : 30_000;
/** how long the bench waits for nginx and the gateway's event streams to come up */
const START_WAIT = { timeoutMs: 20_000, intervalMs: 50 };
const WARMUP = QUICK ? 500 : 1500;
const ROUNDS = 5;
/** idle interval measuring each target's background CPU (subtracted from its per-request CPU) */
const IDLE_MS = 3000;

const children: ChildProcess[] = [];
const tmpDirs: string[] = [];
let cleaned = false;
async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          const t = setTimeout(() => c.kill("SIGKILL"), 5_000);
          c.once("exit", () => {
            clearTimeout(t);
            resolve();
          });
          c.kill("SIGTERM");
        }),
    ),
  );
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    void cleanup().then(() => process.exit(130));
  });
}

const log = (s: string) => process.stderr.write(`${s}\n`);

// ------------------------------------------------------------------ child processes

/**
 * Spawn a kvsync sub-command; resolve with the first JSON log line (stderr) whose event is `event`
 * (and the child, whose CPU time the bench reads).
 */
function spawnKvsync(
  args: string[],
  event: string,
  nodeArgs: string[] = [],
  root = ROOT,
  timeoutMs = 60_000,
): Promise<Record<string, unknown> & { child: ChildProcess }> {
  const child = spawn(
    process.execPath,
    [...nodeArgs, "--import", "tsx", join(root, "src", "cli.ts"), ...args],
    {
      cwd: root,
      env: { ...process.env, KVSYNC_LOG_LEVEL: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  children.push(child);
  return new Promise((resolve, reject) => {
    let buf = "";
    let tail = "";
    const timer = setTimeout(
      () => reject(new Error(`kvsync ${args[0]}: no ${event} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    child.stderr!.on("data", (d: Buffer) => {
      buf += d.toString("utf8");
      let i = buf.indexOf("\n");
      while (i !== -1) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
        tail = line.slice(0, 500);
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (j.event === event) {
            clearTimeout(timer);
            resolve({ ...j, child });
          }
        } catch {
          // not a log line
        }
      }
      if (buf.length > 1 << 20) buf = "";
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`kvsync ${args[0]} exited with ${code} before ${event}: ${tail}`));
    });
  });
}

function which(cmd: string): string | null {
  for (const dir of ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]) {
    try {
      execFileSync("test", ["-x", join(dir, cmd)]);
      return join(dir, cmd);
    } catch {
      // not there
    }
  }
  return null;
}

/** nginx binary, installed from Debian (nginx-light) when missing. */
function ensureNginx(): string {
  let bin = which("nginx");
  if (bin) return bin;
  if (process.getuid?.() !== 0) throw new Error("nginx is missing and installing it needs root");
  log("installing nginx-light (apt-get)...");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = () =>
    execFileSync("apt-get", ["install", "-y", "--no-install-recommends", "nginx-light"], {
      env,
      stdio: "ignore",
    });
  try {
    install();
  } catch {
    execFileSync("apt-get", ["update"], { env, stdio: "ignore" });
    install();
  }
  // the package starts the system service on install: we run our own instance
  try {
    execFileSync("sh", ["-c", "service nginx stop || true"], { stdio: "ignore" });
  } catch {
    // no service manager
  }
  bin = which("nginx");
  if (!bin) throw new Error("nginx-light installed but no nginx binary found");
  return bin;
}

async function startNginx(upstreams: string[]): Promise<{ url: string; version: string; pid: number }> {
  const bin = ensureNginx();
  // nginx -v prints on stderr
  const v = spawnSync(bin, ["-v"], { encoding: "utf8" });
  const version = `${v.stderr ?? ""}${v.stdout ?? ""}`.trim();
  const dir = mkdtempSync(join(tmpdir(), "kvsync-nginx-"));
  tmpDirs.push(dir);
  const port = await freePort();
  const servers = upstreams.map((u) => `    server ${new URL(u).host};`).join("\n");
  const conf = `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream engines {
${servers}
    keepalive 128;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://engines;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      client_max_body_size 16m;
    }
  }
}
`;
  writeFileSync(join(dir, "nginx.conf"), conf);
  const child = spawn(bin, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  children.push(child);
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-2000);
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `nginx on ${url} (${err})`,
    async () => {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${err}`);
      const r = await fetch(`${url}/health`);
      await r.arrayBuffer();
      return r.status === 200;
    },
    START_WAIT,
  );
  return { url, version, pid: child.pid! };
}

/** CPU time (user + system, ms) of these processes and their children so far, from /proc (Linux). */
function cpuMs(pids: number[]): number {
  let ticks = 0;
  const seen = new Set<number>();
  const visit = (pid: number) => {
    if (seen.has(pid)) return;
    seen.add(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // fields after the command (which may hold spaces): state is field 3, utime 14, stime 15
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]);
      for (const c of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").split(" "))
        if (c.trim() !== "") visit(Number(c));
    } catch {
      // gone, or no /proc: counts as 0
    }
  };
  for (const p of pids) visit(p);
  return (ticks * 1000) / CLK_TCK;
}
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

// ------------------------------------------------------------------ load generator

const TENANTS = Array.from(
  { length: 4 },
  (_, t) =>
    `You are assistant ${t}. ` +
    Array.from({ length: 120 }, (_, i) => `rule${(i * 7 + t) % 31} applies to case ${i % 17}`).join(", "),
);
const BODIES = Array.from({ length: 64 }, (_, i) =>
  JSON.stringify({
    model: MODEL,
    messages: [
      { role: "system", content: TENANTS[i % TENANTS.length] },
      { role: "user", content: `Question ${i}: summarize item ${i * 13} of the account in one line.` },
    ],
    max_tokens: 8,
  }),
);

interface LoadResult {
  /**
   * CPU time of the target's own processes per request, background (idle) CPU subtracted
   * (gateway: the kvsync process, threads included; nginx: master + worker), us. Immune to the
   * machine's load, unlike requests/s and latency, as long as the CPU is not thrashing.
   */
  cpuUsPerRequest: number | null;
  requests: number;
  errors: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
}

interface Phase {
  /** CPU ms of the target's processes during the phase (null: not measured) */
  cpuMs: number | null;
  lat: Float64Array;
  done: number;
  errors: number;
  seconds: number;
}

/** Closed loop: CONCURRENCY workers, each sends the next request when its previous one is done. */
async function closedLoop(origins: string[], maxRequests: number, maxMs: number): Promise<Phase> {
  const pools = origins.map((o) => new Pool(o, { connections: CONCURRENCY, pipelining: 1 }));
  const lat = new Float64Array(maxRequests);
  let sent = 0;
  let done = 0;
  let errors = 0;
  let firstError = "";
  const t0 = performance.now();
  const deadline = t0 + maxMs;
  const worker = async () => {
    while (sent < maxRequests && performance.now() < deadline) {
      const k = sent++;
      const pool = pools[k % pools.length];
      const s = performance.now();
      try {
        const r = await pool.request({
          path: "/v1/chat/completions",
          method: "POST",
          headers: { "content-type": "application/json" },
          body: BODIES[k % BODIES.length],
        });
        const text = await r.body.text();
        if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}: ${text.slice(0, 200)}`);
        lat[done++] = performance.now() - s;
      } catch (err) {
        errors++;
        if (!firstError) firstError = String(err);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
  if (errors > 0) log(`  ${errors} errors, first: ${firstError}`);
  return { cpuMs: null, lat: lat.slice(0, done), done, errors, seconds: (performance.now() - t0) / 1000 };
}

const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;

function combine(phases: Phase[]): LoadResult {
  const n = phases.reduce((a, p) => a + p.done, 0);
  const all = new Float64Array(n);
  let o = 0;
  for (const p of phases) {
    all.set(p.lat, o);
    o += p.done;
  }
  all.sort();
  let sum = 0;
  for (const x of all) sum += x;
  const seconds = phases.reduce((a, p) => a + p.seconds, 0);
  const cpu = phases.every((p) => p.cpuMs !== null) ? phases.reduce((a, p) => a + p.cpuMs!, 0) : null;
  return {
    cpuUsPerRequest: cpu === null || n === 0 ? null : round((cpu * 1000) / n, 1),
    requests: n,
    errors: phases.reduce((a, p) => a + p.errors, 0),
    seconds: round(seconds, 2),
    rps: round(n / seconds, 1),
    p50Ms: round(percentileSorted(all, 0.5), 3),
    p99Ms: round(percentileSorted(all, 0.99), 3),
    meanMs: round(n ? sum / n : Number.NaN, 3),
  };
}

interface Target {
  name: string;
  origins: string[];
  /** processes whose CPU time is the target's own cost (empty: not measured) */
  pids: number[];
}

/**
 * Measure every target in ROUNDS interleaved rounds (direct, gateway, nginx, direct, ...), each
 * after its own warm-up, so that drift in machine load hits all targets alike.
 */
async function measureAll(targets: Target[]): Promise<Map<string, LoadResult>> {
  const phases = new Map<string, Phase[]>(targets.map(({ name }) => [name, []]));
  for (const { origins } of targets) await closedLoop(origins, WARMUP, 30_000);
  // what each target burns with no request (event streams, health probes, timers), per ms: a
  // phase's CPU minus this over its duration is the requests' own
  const idle = new Map<string, number>();
  const i0 = targets.map((t) => cpuMs(t.pids));
  const it0 = performance.now();
  await new Promise((r) => setTimeout(r, IDLE_MS));
  const idleWall = performance.now() - it0;
  for (let k = 0; k < targets.length; k++)
    idle.set(targets[k].name, (cpuMs(targets[k].pids) - i0[k]) / idleWall);
  for (let round_ = 0; round_ < ROUNDS; round_++) {
    for (const { name, origins, pids } of targets) {
      const c0 = pids.length > 0 ? cpuMs(pids) : null;
      const ph = await closedLoop(origins, Math.ceil(MAX_REQUESTS / ROUNDS), MAX_MS / ROUNDS);
      if (c0 !== null) ph.cpuMs = cpuMs(pids) - c0 - idle.get(name)! * ph.seconds * 1000;
      phases.get(name)!.push(ph);
      log(
        `  round ${round_ + 1} ${name.padEnd(8)} ${String(ph.done).padStart(5)} req in ${ph.seconds.toFixed(1)} s: ` +
          `${(ph.done / ph.seconds).toFixed(0)} req/s, p50 ${percentileSorted(ph.lat.sort(), 0.5).toFixed(2)} ms`,
      );
    }
  }
  return new Map([...phases].map(([n, ps]) => [n, combine(ps)]));
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const started = performance.now();
  const loadStart = loadavg()[0];
  log(
    `gateway bench: ${ENGINES} mock engines, concurrency ${CONCURRENCY}, <= ${MAX_REQUESTS} requests / ${MAX_MS / 1000} s per target`,
  );
  const ready = await spawnKvsync(
    [
      "mock-engine",
      "--replicas",
      String(ENGINES),
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--events-endpoint",
      "tcp://127.0.0.1:*",
      "--replay-endpoint",
      "tcp://127.0.0.1:*",
      "--model",
      MODEL,
      "--speed",
      "1000",
      "--num-gpu-blocks",
      "4096",
    ],
    "engines.ready",
  );
  const engines = ready.engines as Array<{ http: string; events: string[]; replay: string[] }>;
  if (!Array.isArray(engines) || engines.length !== ENGINES) throw new Error("engines.ready without engines");
  const direct = engines.map((e) => e.http);

  const dir = mkdtempSync(join(tmpdir(), "kvsync-gw-bench-"));
  tmpDirs.push(dir);
  const enginesFile = join(dir, "engines.json");
  writeFileSync(
    enginesFile,
    JSON.stringify({
      engines: engines.map((e, i) => ({
        name: `pod-${i}`,
        model: MODEL,
        http: e.http,
        events: e.events[0],
        replay: e.replay[0],
      })),
    }),
  );
  const startGateway = async (root: string, nodeArgs: string[]) => {
    const started = await spawnKvsync(
      [
        "gateway",
        "--engines",
        enginesFile,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--policy",
        "kv-aware",
      ],
      "gateway.started",
      nodeArgs,
      root,
    );
    const adminUrl = started.adminUrl as string;
    await waitFor(
      "every engine's event stream live at the gateway",
      async () => {
        const t = await (await fetch(`${adminUrl}/admin/pods`)).text();
        return (t.match(/"state":"live"/g) ?? []).length >= ENGINES;
      },
      START_WAIT,
    );
    return { url: started.url as string, pid: started.child.pid! };
  };
  const gw = await startGateway(ROOT, PROF_DIR ? ["--cpu-prof", "--cpu-prof-dir", PROF_DIR] : []);
  const gwUrl = gw.url;
  const base = BASELINE_ROOT ? await startGateway(BASELINE_ROOT, []) : null;
  const nginx = await startNginx(direct);
  log(`  engines ${direct.join(" ")}; gateway ${gwUrl}; ${nginx.version} ${nginx.url}`);

  const res = await measureAll([
    { name: "direct", origins: direct, pids: [] },
    { name: "gateway", origins: [gwUrl], pids: [gw.pid] },
    { name: "nginx", origins: [nginx.url], pids: [nginx.pid] },
    ...(base ? [{ name: "baseline", origins: [base.url], pids: [base.pid] }] : []),
  ]);
  const rBase = res.get("baseline") ?? null;
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
    request: "chat, ~500-token prompt, max_tokens 8, non-streaming",
    direct: rDirect,
    gateway: { ...rGateway, addedLatency: added(rGateway), vsDirect: ratios(rGateway) },
    nginx: { ...rNginx, addedLatency: added(rNginx), vsDirect: ratios(rNginx) },
    ...(rBase
      ? {
          baseline: { root: BASELINE_ROOT, ...rBase, addedLatency: added(rBase), vsDirect: ratios(rBase) },
          gatewayVsBaseline: {
            rps: round(rGateway.rps / rBase.rps, 3),
            p50: round(rGateway.p50Ms / rBase.p50Ms, 3),
            cpuPerRequest:
              rGateway.cpuUsPerRequest !== null && rBase.cpuUsPerRequest
                ? round(rGateway.cpuUsPerRequest / rBase.cpuUsPerRequest, 3)
                : null,
          },
        }
      : {}),
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
    ...(rBase ? [["baseline", rBase] as const] : []),
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
