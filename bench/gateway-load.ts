/**
 * What bench:gateway and its A/B (bench/ab/gateway-ab.ts) share: the child processes they start
 * (`kvsync mock-engine`, `kvsync gateway`, of this tree or an A/B side's) and stop, and the load
 * generator: a fixed-concurrency closed loop (undici, bounded in count and time) of chat requests,
 * measured over interleaved rounds, with each target's CPU per request read from /proc.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { percentileSorted } from "../src/util/stats.ts";
import { waitFor } from "../src/util/wait.ts";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const MODEL = "Qwen/Qwen3-0.6B";
export const CONCURRENCY = 16;
/** how long a bench waits for a gateway's event streams (and nginx) to come up */
export const START_WAIT = { timeoutMs: 20_000, intervalMs: 50 };

export const log = (s: string) => process.stderr.write(`${s}\n`);
export const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;

// ------------------------------------------------------------------ child processes

const children: ChildProcess[] = [];
const tmpDirs: string[] = [];
let cleaned = false;

/** Stop every child (SIGTERM, SIGKILL after 5 s) and remove the temporary directories; once. */
export async function cleanup(): Promise<void> {
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

/** a child the benches stop at the end */
export function track(child: ChildProcess): ChildProcess {
  children.push(child);
  return child;
}

/** a temporary directory removed at the end */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tmpDirs.push(dir);
  return dir;
}

/**
 * Spawn a kvsync sub-command of the CLI at `cli` (this tree's src/cli.ts or a side's), with
 * `nodeArgs` for node itself; resolve with the first JSON log line (stderr) whose event is `event`,
 * and the child (whose CPU time the benches read).
 */
export function spawnKvsync(
  cli: string,
  args: string[],
  event: string,
  nodeArgs: string[] = [],
  timeoutMs = 60_000,
): Promise<Record<string, unknown> & { child: ChildProcess }> {
  const child = track(
    spawn(process.execPath, [...nodeArgs, "--import", "tsx", cli, ...args], {
      cwd: ROOT,
      env: { ...process.env, KVSYNC_LOG_LEVEL: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
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

export interface EngineFleet {
  /** the engines' HTTP origins */
  direct: string[];
  /** an engines file (static discovery) naming them pod-0, pod-1, ... */
  enginesFile: string;
}

/** `n` mock engines in one child process (fast: speed 1000), and an engines file for gateways. */
export async function startEngines(cli: string, n: number): Promise<EngineFleet> {
  const ready = await spawnKvsync(
    cli,
    [
      "mock-engine",
      "--replicas",
      String(n),
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
  if (!Array.isArray(engines) || engines.length !== n) throw new Error("engines.ready without engines");
  const enginesFile = join(tempDir("kvsync-gw-bench-"), "engines.json");
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
  return { direct: engines.map((e) => e.http), enginesFile };
}

/**
 * `kvsync gateway` (kv-aware) of the CLI at `cli` over the fleet, once every stream is live;
 * `nodeArgs` go to its node (e.g. `--cpu-prof`).
 */
export async function startGateway(
  cli: string,
  fleet: EngineFleet,
  nodeArgs: string[] = [],
): Promise<{ url: string; adminUrl: string; pid: number }> {
  const started = await spawnKvsync(
    cli,
    [
      "gateway",
      "--engines",
      fleet.enginesFile,
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
  );
  const url = started.url as string;
  const adminUrl = started.adminUrl as string;
  await waitFor(
    `every engine's event stream live at the gateway ${url}`,
    async () => {
      const t = await (await fetch(`${adminUrl}/admin/pods`)).text();
      return (t.match(/"state":"live"/g) ?? []).length >= fleet.direct.length;
    },
    START_WAIT,
  );
  return { url, adminUrl, pid: started.child.pid! };
}

/** CPU time (user + system, ms) of these processes and their children so far, from /proc (Linux). */
export function cpuMs(pids: number[]): number {
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
export const BODIES = Array.from({ length: 64 }, (_, i) =>
  JSON.stringify({
    model: MODEL,
    messages: [
      { role: "system", content: TENANTS[i % TENANTS.length] },
      { role: "user", content: `Question ${i}: summarize item ${i * 13} of the account in one line.` },
    ],
    max_tokens: 8,
  }),
);
export const REQUEST = "chat, ~500-token prompt, max_tokens 8, non-streaming";

export interface LoadResult {
  /**
   * CPU time of the target's own processes per request, background (idle) CPU subtracted
   * (gateway: the kvsync process, threads included; nginx: master + worker), us; null when the
   * target has no processes of its own (direct). Immune to the machine's load, unlike requests/s
   * and latency, as long as the CPU is not thrashing.
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

export interface Phase {
  /** CPU ms of the target's processes during the phase, idle CPU subtracted (null: not measured) */
  cpuMs: number | null;
  lat: Float64Array;
  done: number;
  errors: number;
  seconds: number;
}

/** Closed loop: CONCURRENCY workers, each sends the next request when its previous one is done. */
export async function closedLoop(origins: string[], maxRequests: number, maxMs: number): Promise<Phase> {
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
      const pool = pools[k % pools.length]!;
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

export function combine(phases: Phase[]): LoadResult {
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

export interface Rounds {
  rounds: number;
  warmup: number;
  maxRequests: number;
  maxMs: number;
  /** reverse the targets' order every other round (an A/B's two sides) */
  alternate?: boolean;
}

export interface Target {
  name: string;
  origins: string[];
  /** processes whose CPU time is the target's own cost (empty: not measured) */
  pids: number[];
}

/** idle interval measuring each target's background CPU (subtracted from its phases' CPU) */
const IDLE_MS = 3000;

/**
 * Measure every target in interleaved rounds (direct, gateway, nginx, direct, ...), each after
 * its own warm-up, so that drift in machine load hits all targets alike; each target's phases,
 * one per round, with the CPU its processes spent on the phase's requests.
 */
export async function measurePhases(targets: Target[], r: Rounds): Promise<Map<string, Phase[]>> {
  const phases = new Map<string, Phase[]>(targets.map(({ name }) => [name, []]));
  for (const { origins } of targets) await closedLoop(origins, r.warmup, 30_000);
  // what each target burns with no request (event streams, health probes, timers), per ms: a
  // phase's CPU minus this over its duration is the requests' own
  const i0 = targets.map((t) => cpuMs(t.pids));
  const it0 = performance.now();
  await new Promise((res) => setTimeout(res, IDLE_MS));
  const idleWall = performance.now() - it0;
  const idle = new Map(targets.map((t, k) => [t.name, (cpuMs(t.pids) - i0[k]!) / idleWall]));
  for (let k = 0; k < r.rounds; k++) {
    const order = r.alternate && k % 2 === 1 ? [...targets].reverse() : targets;
    for (const { name, origins, pids } of order) {
      const c0 = pids.length > 0 ? cpuMs(pids) : null;
      const ph = await closedLoop(origins, Math.ceil(r.maxRequests / r.rounds), r.maxMs / r.rounds);
      if (c0 !== null) ph.cpuMs = cpuMs(pids) - c0 - idle.get(name)! * ph.seconds * 1000;
      phases.get(name)!.push(ph);
      log(
        `  round ${k + 1} ${name.padEnd(8)} ${String(ph.done).padStart(5)} req in ${ph.seconds.toFixed(1)} s: ` +
          `${(ph.done / ph.seconds).toFixed(0)} req/s, p50 ${percentileSorted(ph.lat.sort(), 0.5).toFixed(2)} ms`,
      );
    }
  }
  return phases;
}
