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
 *   npm run bench:gateway       (KVSYNC_BENCH_QUICK=1: shorter load phases)
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { createIndex } from "../src/index/index.ts";
import { hashFromInt } from "../src/protocol/index.ts";
import { createPolicy, LoadTracker } from "../src/routing/index.ts";
import { freePort } from "../src/util/free-port.ts";
import { waitFor } from "../src/util/wait.ts";
import {
  CONCURRENCY,
  cleanup,
  combine,
  type LoadResult,
  log,
  measurePhases,
  REQUEST,
  ROOT,
  round,
  START_WAIT,
  startEngines,
  startGateway,
  tempDir,
  track,
} from "./gateway-load.ts";
import { routingBench } from "./routing-decision.ts";

const QUICK = process.env.KVSYNC_BENCH_QUICK === "1";
const CLI = join(ROOT, "src", "cli.ts");
const ENGINES = 4;
const MAX_REQUESTS = QUICK ? 3000 : 15_000;
const MAX_MS = QUICK ? 10_000 : 30_000;
const WARMUP = QUICK ? 500 : 1500;
const ROUNDS = 5;

// ------------------------------------------------------------------ child processes

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

async function startNginx(upstreams: string[]): Promise<{ url: string; version: string }> {
  const bin = ensureNginx();
  // nginx -v prints on stderr
  const v = spawnSync(bin, ["-v"], { encoding: "utf8" });
  const version = `${v.stderr ?? ""}${v.stdout ?? ""}`.trim();
  const dir = tempDir("kvsync-nginx-");
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
  const child = track(
    spawn(bin, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
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
  return { url, version };
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const started = performance.now();
  log(
    `gateway bench: ${ENGINES} mock engines, concurrency ${CONCURRENCY}, <= ${MAX_REQUESTS} requests / ${MAX_MS / 1000} s per target`,
  );
  const fleet = await startEngines(CLI, ENGINES);
  const direct = fleet.direct;
  const { url: gwUrl } = await startGateway(CLI, fleet);
  const nginx = await startNginx(direct);
  log(`  engines ${direct.join(" ")}; gateway ${gwUrl}; ${nginx.version} ${nginx.url}`);

  const phases = await measurePhases(
    [
      ["direct", direct],
      ["gateway", [gwUrl]],
      ["nginx", [nginx.url]],
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
      `CPU p50 ${routing.cpuP50Us} us, p99 ${routing.cpuP99Us} us`,
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
    },
    routingDecision: routing,
    seconds: round((performance.now() - started) / 1000, 1),
  };
  log("");
  log("target    req/s   vs direct   p50 ms   +p50 ms   p99 ms   +p99 ms");
  for (const [name, x] of [
    ["direct", rDirect],
    ["gateway", rGateway],
    ["nginx", rNginx],
  ] as const) {
    log(
      `${name.padEnd(8)} ${x.rps.toFixed(0).padStart(6)} ${(x.rps / rDirect.rps).toFixed(2).padStart(10)}x ` +
        `${x.p50Ms.toFixed(2).padStart(8)} ${(x.p50Ms - rDirect.p50Ms).toFixed(2).padStart(9)} ` +
        `${x.p99Ms.toFixed(2).padStart(8)} ${(x.p99Ms - rDirect.p99Ms).toFixed(2).padStart(9)}`,
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
