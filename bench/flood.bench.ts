/**
 * Flood isolation benchmark (issue 17), two phases in one run against the same subscribers:
 *  - quiet: 3 engine processes publish vLLM-format batches at a normal rate (50 a second, 8
 *    events each);
 *  - flood: the same, plus a 4th engine process flooding its PUB as fast as it can
 *    (harness/flood-engine.ts: pre-encoded batches, a send each).
 * This process is the router: a SubscriberManager on real ZeroMQ sockets feeding the index, and
 * an HTTP server whose `POST /route` makes a kv-aware routing decision over the 4 streams for an
 * 2k-token prompt (tokens hashed and matched against the index being written). An open-loop
 * client in this process sends 50 requests a second; a request's latency counts from when it
 * was due, so time spent waiting for the event loop is in it. Measured per phase: routing p50/p99,
 * the quiet streams' event lag (engine timestamp → applied in the index) p50/p99, and RSS; the
 * flooding stream's buffer figures. Prints the flood/quiet ratios and ends with one JSON line
 * `{"bench":"flood",...}`, also written to bench/results/flood.json.
 *
 *   npm run bench:flood       (KVSYNC_BENCH_QUICK=1: 5 s phases instead of 15 s)
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Registry } from "prom-client";
import { request } from "undici";
import { FLOOD_ENGINE, type FloodEngineConfig } from "../harness/flood-engine.ts";
import { SubscriberManager } from "../src/events/manager.ts";
import { createIndex } from "../src/index/index.ts";
import type { PrefixIndex } from "../src/index/types.ts";
import type { EventBatch } from "../src/protocol/types.ts";
import { createPolicy, LoadTracker } from "../src/routing/index.ts";
import type { Candidate, RouteRequest } from "../src/routing/types.ts";
import { seededRandom } from "../src/util/rng.ts";
import { percentileSorted } from "../src/util/stats.ts";
import { waitFor } from "../src/util/wait.ts";

const QUICK = process.env.KVSYNC_BENCH_QUICK === "1";
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const PHASE_MS = QUICK ? 5_000 : 15_000;
const REQ_PER_S = 50;
const QUIET = 3;
const MODEL = "m";
const log = (s: string) => process.stderr.write(`${s}\n`);

interface Engine {
  name: string;
  child: ChildProcess;
  pub: string;
  replay: string;
}

const children: ChildProcess[] = [];

async function engine(name: string, cfg: FloodEngineConfig): Promise<Engine> {
  const child = spawn(process.execPath, ["--import", "tsx", FLOOD_ENGINE, JSON.stringify(cfg)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(child);
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const ready = await new Promise<Record<string, string>>((resolve, reject) => {
    lines.on("line", (l) => {
      const m = JSON.parse(l) as Record<string, string>;
      if (m.event === "ready") resolve(m);
    });
    child.once("exit", (code) => reject(new Error(`${name} exited ${code}`)));
  });
  return { name, child, pub: ready.pub, replay: ready.replay };
}

const base = (hashBase: number): FloodEngineConfig => ({
  mode: "steady",
  rate: 50,
  eventsPerBatch: 8,
  cacheBlocks: 4096,
  bufferBatches: 10_000,
  maxBatches: 1_000_000_000,
  hashBase,
  sndHwm: 100_000,
});

/** Lag of every batch a quiet stream applies while `recording` (ms). */
function lagRecorder(index: PrefixIndex, quiet: Set<string>) {
  const lags: number[] = [];
  let recording = false;
  const wrapped = new Proxy(index, {
    get(t, p) {
      if (p === "applyBatch")
        return (ref: { streamId: string }, b: EventBatch) => {
          if (recording && quiet.has(ref.streamId)) lags.push(Date.now() - b.ts * 1000);
          return t.applyBatch(ref as never, b);
        };
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return {
    index: wrapped,
    start() {
      lags.length = 0;
      recording = true;
    },
    stop(): number[] {
      recording = false;
      return lags.splice(0).sort((a, b) => a - b);
    },
  };
}

function routeServer(index: PrefixIndex, candidates: Candidate[]) {
  const policy = createPolicy("kv-aware", { index, loads: new LoadTracker() });
  const ns = { model: MODEL, lora: null, blockSize: 16 };
  const r = seededRandom(7);
  const prompts = Array.from({ length: 32 }, () => Array.from({ length: 2048 }, () => (r() * 151_000) | 0));
  let n = 0;
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on("end", () => {
      const route: RouteRequest = { ns, tokenIds: prompts[n++ % prompts.length], candidates };
      const d = policy.route(route);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ pod: d.ranked[0].candidate.pod }));
    });
  });
}

/** Open loop: REQ_PER_S requests a second for `ms`; latency from each request's due time (ms). */
async function load(url: string, ms: number): Promise<number[]> {
  const lat: number[] = [];
  const start = performance.now();
  const every = 1000 / REQ_PER_S;
  const inflight: Promise<void>[] = [];
  for (let i = 0; ; i++) {
    const due = start + i * every;
    if (due - start >= ms) break;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    inflight.push(
      request(`${url}/route`, { method: "POST", body: "{}" }).then(async (r) => {
        await r.body.text();
        lat.push(performance.now() - due);
      }),
    );
  }
  await Promise.all(inflight);
  return lat.sort((a, b) => a - b);
}

const pct = (xs: number[], p: number) => (xs.length === 0 ? Number.NaN : percentileSorted(xs, p / 100));
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

async function main(): Promise<void> {
  const started = performance.now();
  const uptime = loadavg().map((x) => round(x));
  const quiet = await Promise.all(
    Array.from({ length: QUIET }, (_, i) => engine(`quiet-${i}`, base(1e6 * (i + 1)))),
  );
  const rec = lagRecorder(createIndex(), new Set(quiet.map((e) => e.name)));
  const registry = new Registry();
  const manager = new SubscriberManager({ index: rec.index, registry, topic: "kv" });
  const pod = (e: Engine) => ({
    name: e.name,
    model: MODEL,
    loras: [],
    http: "http://127.0.0.1:1",
    events: e.pub,
    replay: e.replay,
    dataParallelSize: 1,
    ready: true,
  });
  manager.setPods(quiet.map(pod));
  await waitFor(
    "quiet streams live",
    () => quiet.every((e) => manager.status(e.name)?.state === "live"),
    60_000,
  );
  const candidates: Candidate[] = ["quiet-0", "quiet-1", "quiet-2", "flood"].map((s) => ({
    streamId: s,
    pod: s,
    rank: null,
    http: "http://127.0.0.1:1",
    live: true,
  }));
  const server = routeServer(rec.index, candidates);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  await load(url, 1000); // warm-up

  const phase = async (name: string) => {
    let peakRss = 0;
    const t = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage.rss());
    }, 100);
    rec.start();
    const lat = await load(url, PHASE_MS);
    const lags = rec.stop();
    clearInterval(t);
    const r = {
      requests: lat.length,
      routeP50Ms: round(pct(lat, 50)),
      routeP99Ms: round(pct(lat, 99)),
      lagBatches: lags.length,
      lagP50Ms: round(pct(lags, 50)),
      lagP99Ms: round(pct(lags, 99)),
      peakRssMB: round(peakRss / 2 ** 20, 1),
    };
    log(`${name}: ${JSON.stringify(r)}`);
    return r;
  };

  const quietRun = await phase("quiet");
  const flooder = await engine("flood", { ...base(9e6), mode: "flood", bufferBatches: 20_000 });
  manager.setPods([...quiet, flooder].map(pod));
  await waitFor("the flood overruns its subscriber", () => (manager.flow("flood")?.pauses ?? 0) > 0, 60_000);
  const floodRun = await phase("flood");
  const flow = manager.flow("flood");
  const st = manager.status("flood");
  const out = {
    bench: "flood",
    quick: QUICK,
    phaseSeconds: PHASE_MS / 1000,
    loadAvgAtStart: uptime,
    loadAvgAtEnd: loadavg().map((x) => round(x)),
    quiet: quietRun,
    flood: floodRun,
    routeP99Ratio: round(floodRun.routeP99Ms / quietRun.routeP99Ms),
    lagP99RatioMs: [quietRun.lagP99Ms, floodRun.lagP99Ms],
    floodStream: {
      eventsApplied: st?.eventsApplied,
      gaps: st?.gaps,
      replays: st?.replays,
      resyncs: st?.resyncs,
      pauses: flow?.pauses,
      pausedMs: round(flow?.pausedMs ?? 0, 0),
      shed: flow?.shed,
      slicesCut: flow?.slicesCut,
      peakBufferedKB: round((flow?.peakBufferedBytes ?? 0) / 1024, 1),
      peakLiveKB: round((flow?.peakLiveBytes ?? 0) / 1024, 1),
    },
    maxRssMB: round(process.resourceUsage().maxRSS / 1024, 1),
    targets: {
      routeP99Within2x: floodRun.routeP99Ms <= 2 * quietRun.routeP99Ms,
      lagP99Under50Ms: floodRun.lagP99Ms < 50,
    },
    seconds: round((performance.now() - started) / 1000, 1),
  };
  log(
    `routing p99 ${quietRun.routeP99Ms} ms quiet, ${floodRun.routeP99Ms} ms flooded (${out.routeP99Ratio}x); ` +
      `quiet streams' lag p99 ${quietRun.lagP99Ms} ms quiet, ${floodRun.lagP99Ms} ms flooded; max RSS ${out.maxRssMB} MB`,
  );
  server.close();
  await manager.close();
  const line = JSON.stringify(out);
  const file = join(ROOT, "bench", "results", "flood.json");
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${line}\n`);
  process.stdout.write(`${line}\n`);
}

try {
  await main();
} catch (err) {
  log(`flood bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exitCode = 1;
} finally {
  for (const c of children) c.stdin?.end();
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
}
