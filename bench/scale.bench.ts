/**
 * Scale benchmark (not a test; issue 18): one gateway replica following 1,000 pods.
 *
 *  - publisher child processes (scale-publishers.ts, SCALE_PUB_PROCS, default 2) host the 1,000
 *    pods between them: each a real ZeroMQ PUB socket and replay ROUTER (the mock engine's
 *    publisher, vLLM's array-era batches, a step's events per batch every SCALE_BATCH_MS) and a
 *    light HTTP responder, listed in an engines file the gateway discovers;
 *  - `kvsync gateway` (kv-aware, health checks on, `--cluster` on a nats-server started here)
 *    runs under `--cpu-prof`;
 *  - the index is filled to `blocksPerPod` per pod, then for each aggregate rate of the sweep
 *    (block events/s: one hash in a BlockStored or BlockRemoved) the bench measures over a
 *    window, while a closed loop of clients sends completions (token-id prompts on the pods'
 *    tenant system prompts): batches applied vs sent (keeping up), event lag p99 (engine batch
 *    timestamp to applied, the gateway's histogram), routing decision p99 (its histogram),
 *    requests/s, the gateway's RSS and CPU, the publisher's achieved rate and CPU, load average;
 *  - a peer's snapshot export (src/cluster/snapshot.ts) of the full index under event load: its
 *    longest blocking slice vs what one synchronous export of every stream takes;
 *  - the gateway's CPU profile: top self-time functions.
 * Histogram p99s are the upper bound of the bucket holding the 99th percentile.
 * Ends with one JSON line `{"bench":"scale",...}`, also written to bench/results/scale.json.
 *
 *   npm run bench:scale     (SCALE_RATES=50000,100000,200000 SCALE_PODS=1000 SCALE_WINDOW_MS=12000)
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { connect } from "@nats-io/transport-node";
import { NatsServer } from "../harness/nats-server.ts";
import { fetchSnapshot, SNAPSHOT_DEFAULTS } from "../src/cluster/snapshot.ts";
import { waitFor } from "../src/util/wait.ts";
import { cpuProfileTop } from "./cpu-profile.ts";
import { histDiff, indexEntries, requests, scrape } from "./scale-measure.ts";
import { startPublishers } from "./scale-publishers.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const CLI = join(ROOT, "src", "cli.ts");
const MODEL = "Qwen/Qwen3-0.6B";
const PODS = Number(process.env.SCALE_PODS ?? 1000);
const BLOCKS_PER_POD = Number(process.env.SCALE_BLOCKS_PER_POD ?? 2000);
const RATES = (process.env.SCALE_RATES ?? "10000,25000,50000,100000,200000").split(",").map(Number);
const FILL_RATE = Number(process.env.SCALE_FILL_RATE ?? 100_000);
const WINDOW_MS = Number(process.env.SCALE_WINDOW_MS ?? 12_000);
const SETTLE_MS = 3_000;
const CLIENTS = Number(process.env.SCALE_CLIENTS ?? 4);
const PUB_PROCS = Math.max(1, Number(process.env.SCALE_PUB_PROCS ?? 2));
const BATCH_MS = Number(process.env.SCALE_BATCH_MS ?? 100);
const TARGET = { eventsPerSec: 200_000, lagP99Ms: 50, decisionP99Ms: 1 };

const log = (s: string) => process.stderr.write(`${s}\n`);
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const children: ChildProcess[] = [];
const tmp = mkdtempSync(join(tmpdir(), "kvsync-scale-"));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

// ------------------------------------------------------------------ processes

interface ProbeLag {
  n: number;
  p50Ms: number;
  p99Ms: number;
  within50: number;
}

/** The baseline consumer (scale-probe.ts) on every `every`-th pod's PUB socket. */
async function startProbe(enginesFile: string, every: number) {
  const engines = (JSON.parse(readFileSync(enginesFile, "utf8")) as { engines: Array<{ events: string }> })
    .engines;
  const endpoints = engines.filter((_, i) => i % every === 0).map((e) => e.events);
  const child = fork(join(ROOT, "bench", "scale-probe.ts"), [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, SCALE_PROBE_ENDPOINTS: endpoints.join(",") },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  children.push(child);
  let pending: ((l: ProbeLag) => void) | null = null;
  await new Promise<void>((resolve, reject) => {
    child.on("message", (m: { ready?: boolean; lag?: ProbeLag }) => {
      if (m.ready === true) resolve();
      if (m.lag !== undefined) pending?.(m.lag);
    });
    child.once("exit", (code) => reject(new Error(`probe exited with ${code}`)));
  });
  return {
    streams: endpoints.length,
    /** the lags since the last call */
    report: () =>
      new Promise<ProbeLag>((resolve) => {
        pending = resolve;
        child.send({ report: true });
      }),
  };
}

/** The gateway under --cpu-prof; resolves once it logged gateway.started. Its log lines go to `lines`. */
async function startGateway(enginesFile: string, natsUrl: string, profDir: string) {
  const port = await freePort();
  const adminPort = await freePort();
  const child = spawn(
    process.execPath,
    [
      "--cpu-prof",
      `--cpu-prof-dir=${profDir}`,
      // 5 ms samples: the profiler's SIGPROF every 1 ms (the default) interrupts libzmq calls
      // often enough that a socket operation at start-up can fail with EINTR
      "--cpu-prof-interval=5000",
      "--import",
      "tsx",
      CLI,
      "gateway",
      "--discovery",
      "static",
      "--engines",
      enginesFile,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--admin-port",
      String(adminPort),
      "--policy",
      "kv-aware",
      "--cluster",
      natsUrl,
      "--cluster-name",
      "scale",
    ],
    { cwd: ROOT, env: { ...process.env, KVSYNC_LOG_LEVEL: "info" }, stdio: ["ignore", "ignore", "pipe"] },
  );
  children.push(child);
  const lines: Array<Record<string, unknown>> = [];
  const tail: string[] = [];
  let buf = "";
  child.stderr!.on("data", (d: Buffer) => {
    buf += d.toString("utf8");
    let i = buf.indexOf("\n");
    while (i !== -1) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      i = buf.indexOf("\n");
      tail.push(line.slice(0, 300));
      if (tail.length > 20) tail.shift();
      try {
        const j = JSON.parse(line) as Record<string, unknown>;
        // keep the few lines the bench reads, bounded
        if (
          lines.length < 10_000 &&
          typeof j.event === "string" &&
          !String(j.event).startsWith("subscriber.")
        )
          lines.push(j);
      } catch {
        // not a log line
      }
    }
  });
  try {
    await waitFor(
      "gateway.started",
      () => {
        if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}`);
        return lines.some((l) => l.event === "gateway.started");
      },
      { timeoutMs: 300_000, intervalMs: 100 },
    );
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`${String(err)}; its last log lines:\n${tail.join("\n")}`);
  }
  return { child, url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`, lines, tail };
}

/** utime + stime (s) and RSS (bytes) of a process, from /proc. */
function procStat(pid: number): { cpuSec: number; rssBytes: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpuSec = (Number(f[11]) + Number(f[12])) / 100;
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return { cpuSec, rssBytes: rss === null ? 0 : Number(rss[1]) * 1024 };
}

// ------------------------------------------------------------------ run

const procs: { nats: NatsServer | null } = { nats: null };

async function main() {
  const nats = await NatsServer.start();
  procs.nats = nats;
  const profDir = join(tmp, "prof");
  mkdirSync(profDir);
  log(`scale: ${PODS} pods, ${BLOCKS_PER_POD} blocks per pod, rates ${RATES.join(", ")} block events/s`);
  const t0 = performance.now();
  const pub = await startPublishers({
    root: ROOT,
    dir: tmp,
    pods: PODS,
    procs: PUB_PROCS,
    blocksPerPod: BLOCKS_PER_POD,
    batchMs: BATCH_MS,
    model: MODEL,
    children,
  });
  log(`publisher up in ${round((performance.now() - t0) / 1000)} s (${PODS} PUB + ROUTER + HTTP)`);
  let gw: Awaited<ReturnType<typeof startGateway>>;
  try {
    gw = await startGateway(pub.enginesFile, nats.url, profDir);
  } catch (err) {
    // seen: "Interrupted system call" from a ZeroMQ call at start-up under the profiler
    log(`gateway start failed, retrying once: ${String(err).slice(0, 300)}`);
    gw = await startGateway(pub.enginesFile, nats.url, profDir);
  }
  const probe = await startProbe(pub.enginesFile, Math.max(1, Math.round(PODS / 50)));
  const gwPid = gw.child.pid!;
  // a gateway that dies mid-run says why (its last log lines), not only the next scrape's "fetch failed"
  gw.child.once("exit", (code, signal) =>
    log(`gateway exited (${code ?? signal}); its last log lines:\n${gw.tail.join("\n")}`),
  );
  await waitFor(
    `${PODS} streams live`,
    async () => {
      const s = await scrape(gw.admin);
      return s.live >= PODS || `${s.live} live`;
    },
    { timeoutMs: 180_000, intervalMs: 1_000 },
  );
  log(`gateway following ${PODS} live streams ${round((performance.now() - t0) / 1000)} s after start`);
  const rssIdle = procStat(gwPid).rssBytes;

  // fill: tenant prompts, then rolling chains in big batches (few messages) until every pod holds its cap
  pub.send({ seed: true, rate: FILL_RATE, minBatch: 100 });
  const want = PODS * BLOCKS_PER_POD;
  log(`filling the index: ${want} blocks at ${FILL_RATE}/s in batches of 100`);
  const f0 = performance.now();
  await waitFor(
    "the index filled",
    async () => {
      const n = await indexEntries(gw.admin);
      return n >= want || `${n} entries`;
    },
    { timeoutMs: (want / FILL_RATE) * 1000 * 10 + 60_000, intervalMs: 2_000 },
  );
  pub.send({ rate: 0, minBatch: 1 });
  const entriesAfterFill = await indexEntries(gw.admin);
  log(`filled in ${round((performance.now() - f0) / 1000)} s`);
  log(`index: ${entriesAfterFill} entries, gateway RSS ${round(procStat(gwPid).rssBytes / 2 ** 20)} MiB`);

  const measuredFrom = performance.now();
  const steps: Array<Record<string, unknown>> = [];
  for (const rate of RATES) {
    pub.send({ rate });
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const a = await scrape(gw.admin);
    const pa = pub.stats();
    const ga = procStat(gwPid);
    const w0 = performance.now();
    const load0 = loadavg()[0];
    await probe.report();
    const req = await requests(gw.url, WINDOW_MS, MODEL, CLIENTS);
    const b = await scrape(gw.admin);
    const secs = (performance.now() - w0) / 1000;
    const pb = pub.stats();
    const gb = procStat(gwPid);
    const base = await probe.report();
    const sentBatches = pb.sentBatches - pa.sentBatches;
    const sentEvents = pb.sentEvents - pa.sentEvents;
    const applied = b.batches - a.batches;
    const lag = histDiff(a.lag, b.lag, 0.99, 0.05);
    const dec = histDiff(a.decision, b.decision, 0.99, 0.001);
    const step = {
      rate,
      publisherEventsPerSec: Math.round(sentEvents / ((pb.t - pa.t) / 1000)),
      publisherCpuCores: round((pb.cpuSec - pa.cpuSec) / ((pb.t - pa.t) / 1000), 2),
      publisherProcs: PUB_PROCS,
      publisherCpuMsPer1kEvents: round(((pb.cpuSec - pa.cpuSec) * 1000) / Math.max(1, sentEvents / 1000), 2),
      batchMs: BATCH_MS,
      eventsPerBatch: round(sentEvents / Math.max(1, sentBatches), 1),
      publisherDropped: pb.dropped,
      publisherBehindMs: pb.behindMs,
      appliedOverSent: round(sentBatches > 0 ? applied / sentBatches : Number.NaN, 3),
      appliedBlockEventsPerSec: Math.round(
        (sentEvents * (sentBatches > 0 ? applied / sentBatches : 0)) / secs,
      ),
      batchesPerSec: Math.round(applied / secs),
      lagP99Ms: lag.quantile * 1000,
      lagWithin50Ms: round(lag.within, 4),
      lagBatches: lag.count,
      baselineLagP99Ms: round(base.p99Ms, 1),
      baselineLagWithin50Ms: round(base.within50, 4),
      baselineBatches: base.n,
      decisionP99Ms: dec.quantile * 1000,
      decisionWithin1Ms: round(dec.within, 4),
      decisions: dec.count,
      requests: req,
      gatewayCpuCores: round((gb.cpuSec - ga.cpuSec) / secs, 2),
      // the gateway's CPU (events, the clients' requests, the profiler) per 1,000 block events applied
      gatewayCpuMsPer1kEvents: round(
        ((gb.cpuSec - ga.cpuSec) * 1000) /
          Math.max(1, (sentEvents * (sentBatches > 0 ? applied / sentBatches : 0)) / 1000),
        2,
      ),
      gatewayRssMiB: round(gb.rssBytes / 2 ** 20),
      metricsScrapeMs: round(b.ms),
      load1: round(load0, 2),
    };
    steps.push(step);
    const keptUp = step.appliedOverSent >= 0.98 && step.publisherEventsPerSec >= rate * 0.9;
    log(
      `rate ${rate}/s: publisher ${step.publisherEventsPerSec}/s (${step.publisherCpuCores} cores), applied/sent ${step.appliedOverSent}, ` +
        `lag p99 <= ${step.lagP99Ms} ms (${round(lag.within * 100, 2)} % <= 50 ms; baseline consumer p99 ${step.baselineLagP99Ms} ms), decision p99 <= ${step.decisionP99Ms} ms, ` +
        `${req.rps} req/s (${req.failed} failed${req.firstError ? `: ${req.firstError.slice(0, 160)}` : ""}, ${req.onTenantHolder} on a tenant holder), gateway ${step.gatewayCpuCores} cores ` +
        `${step.gatewayRssMiB} MiB, scrape ${step.metricsScrapeMs} ms, load ${step.load1}`,
    );
    if (!keptUp) {
      // past this rate the backlog only grows (and with it the ZeroMQ queues' memory)
      log(`rate ${rate}/s not sustained (publisher or gateway behind): the sweep stops here`);
      break;
    }
  }

  // a starting peer's catch-up from this gateway, under the middle rate's events
  // the highest rate the sweep sustained (the first one if none)
  const kept = steps.filter((x) => (x.appliedOverSent as number) >= 0.98);
  const snapRate = (kept[kept.length - 1]?.rate as number | undefined) ?? RATES[0];
  pub.send({ rate: snapRate });
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const nc = await connect({ servers: nats.url });
  const s0 = performance.now();
  const snap = await fetchSnapshot(
    nc,
    { name: "scale", id: "bench" },
    { ...SNAPSHOT_DEFAULTS, timeoutMs: 60_000 },
  );
  const snapMs = performance.now() - s0;
  await nc.close();
  const servedLine = () => gw.lines.find((l) => l.event === "cluster.snapshot_served");
  if (snap.result === "loaded")
    await waitFor("cluster.snapshot_served", () => servedLine() !== undefined, {
      timeoutMs: 60_000,
      intervalMs: 100,
    });
  else log(`snapshot: ${snap.result}: ${snap.detail}`);
  const served = servedLine() ?? {};
  const snapshot = {
    result: snap.result,
    rate: snapRate,
    streams: snap.result === "loaded" ? snap.streams.length : 0,
    entries: served.entries,
    mib: round(Number(served.bytes) / 2 ** 20),
    wallMs: Math.round(snapMs),
    longestSliceMs: served.longestSliceMs,
    oneTickExportMs: served.exportMs,
    sliceRatio: round(Number(served.exportMs) / Number(served.longestSliceMs), 1),
    longestSliceCpuMs: served.longestSliceCpuMs,
    oneTickExportCpuMs: served.exportCpuMs,
    sliceCpuRatio: round(Number(served.exportCpuMs) / Number(served.longestSliceCpuMs), 1),
  };
  log(
    `snapshot: ${snapshot.streams} streams, ${snapshot.entries} entries, ${snapshot.mib} MiB in ${snapshot.wallMs} ms; ` +
      `longest blocking slice ${snapshot.longestSliceMs} ms (CPU ${snapshot.longestSliceCpuMs} ms) vs ${snapshot.oneTickExportMs} ms ` +
      `(CPU ${snapshot.oneTickExportCpuMs} ms) for every stream's export in one tick`,
  );

  pub.send({ rate: 0 });
  const rssEnd = procStat(gwPid).rssBytes;
  const entries = await indexEntries(gw.admin);
  // SIGTERM: the gateway shuts down and V8 writes the CPU profile
  await stop(gw.child);
  // this gateway's profile (CPU.<date>.<pid>.…): a failed first start leaves its own
  const prof = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile") && f.includes(`.${gwPid}.`));
  const profile =
    prof === undefined
      ? { busyShare: Number.NaN, top: [] }
      : cpuProfileTop(join(profDir, prof), 15, performance.now() - measuredFrom);
  const top = profile.top;
  log(
    `gateway CPU profile over the sweep and snapshot (busy ${round(profile.busyShare * 100)} % of samples), top self time of the busy ones:`,
  );
  for (const t of top) log(`  ${String(t.pct).padStart(5)} %  ${t.fn}  ${t.at}`);

  const best = steps.filter(
    (s) =>
      (s.appliedOverSent as number) >= 0.98 &&
      (s.lagWithin50Ms as number) >= 0.99 &&
      (s.decisionWithin1Ms as number) >= 0.99,
  );
  const sustained = best.reduce((m, s) => Math.max(m, s.publisherEventsPerSec as number), 0);
  const result = {
    bench: "scale",
    node: process.version,
    cores: (await import("node:os")).cpus().length,
    pods: PODS,
    blocksPerPod: BLOCKS_PER_POD,
    indexEntries: entries,
    gatewayRssIdleMiB: round(rssIdle / 2 ** 20),
    gatewayRssEndMiB: round(rssEnd / 2 ** 20),
    bytesPerEntry: round((rssEnd - rssIdle) / Math.max(1, entries), 1),
    steps,
    sustainedBlockEventsPerSec: sustained,
    snapshot,
    profileBusyShare: profile.busyShare,
    profileTop: top,
    targets: {
      eventsPerSec200k: sustained >= TARGET.eventsPerSec,
      lagP99Under50Ms: steps.every((s) => (s.lagWithin50Ms as number) >= 0.99),
      decisionP99Under1Ms: steps.every((s) => (s.decisionWithin1Ms as number) >= 0.99),
    },
  };
  const line = JSON.stringify(result);
  mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
  writeFileSync(join(ROOT, "bench", "results", "scale.json"), `${line}\n`);
  process.stdout.write(`${line}\n`);
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

for (const sig of ["SIGINT", "SIGTERM"] as const)
  process.once(sig, () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    void procs.nats?.stop().finally(() => process.exit(130));
  });

let code = 0;
try {
  await main();
} catch (err) {
  log(`scale bench failed: ${String((err as Error)?.stack ?? err)}`);
  code = 1;
} finally {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await procs.nats?.stop();
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(code);
