import { after, before } from "node:test";
import type { Cluster, Pod } from "../../e2e/harness/cluster.ts";
import type { GatewayOptions, GatewayProcess } from "../../e2e/harness/gateway.ts";
import { getJson } from "../../e2e/harness/http.ts";
import { gatewayOf, useCluster, waitLive } from "../../e2e/harness/suite.ts";
import type { BlocksDoc } from "../../e2e/harness/truth.ts";
import { compareAllWithTruth, describeDiff, diffBlocks } from "../../e2e/harness/truth.ts";
import { scaled, waitFor } from "../../e2e/harness/wait.ts";
import { ChatLoad, type RequestRecord, windowStats } from "./load.ts";
import { logMark, looseCompare, warningsIn } from "./observe.ts";
import { type ExperimentResult, printTable, saveResult } from "./results.ts";
import { metricGrowth, SignalWatch } from "./signal-watch.ts";

/**
 * The chaos experiment: warm up, measure a baseline, apply the fault and verify it took effect,
 * hold it, remove it, then measure recovery from the fault's end and judge what happened.
 * Judgements are collected (not thrown at the first) so every run's table has a row for every
 * experiment; the test then fails with all of them.
 */

/** The gateway's upstream timeouts in the suite: short, so a hang is told from a timeout. */
export const CONNECT_TIMEOUT_MS = 1_000;
export const HEADERS_TIMEOUT_MS = 8_000;
/** The longest a request may take: a failed connect, the retry's connect, a headers timeout. */
export const MAX_REQUEST_MS = 2 * CONNECT_TIMEOUT_MS + HEADERS_TIMEOUT_MS + 3_000;
/** The chaos plan's recovery bound (asserted); kvsync's targets are reported. */
export /** time the last requests' events get to land once the load stops (ms) */
const SETTLE_MS = 2_000;
const RECOVERY_BOUND_MS = 30_000;
/** Rolling window of the throughput / hit-rate recovery. */
const WINDOW_MS = 3_000;

export interface Fault {
  /** pods the fault hits: their requests may fail while it lasts */
  affected: Pod[];
  apply(): Promise<void>;
  /** polled until true: proof that the fault took effect (else the experiment fails) */
  verify(): Promise<true | string>;
  remove(): Promise<void>;
  /** the affected pods still serve HTTP (e.g. only their ZMQ ports are cut): their requests must succeed */
  servesHttp?: boolean;
  /** what the injector's verify measured (kept in the results) */
  evidence?: unknown;
  /** pods to compare with truth after recovery (default: the cluster's pods at that time) */
  pods?: () => Pod[];
}

export interface ExperimentSpec {
  id: string;
  group: string;
  title: string;
  fault: Fault;
  holdMs: number;
  /** kvsync's recovery target (reported) */
  targetMs: number;
  /**
   * gateway log events that must appear from the fault's start (`name` or `name[field=a|b]`; a
   * line naming a pod must name an affected one); the first one times detection
   */
  events: string[];
  /** metrics whose sum must grow across the experiment (`name` or `name{label="v"}`) */
  metrics: string[];
  /**
   * Events watched and timed for the detect column but not required: a signal that fires for
   * this fault only on some machines (its thresholds sit above what a loaded one shows)
   */
  watchOnly?: string[];
  /**
   * Why this fault has no kvsync signal (measured, in docs/chaos.md). Without it, a spec naming
   * no event and no metric fails: every fault must be detected.
   */
  undetected?: string;
  /**
   * A stalled pod loses its cache claim: requests started this long after the fault's start must
   * not go to an affected pod (omitted: not judged)
   */
  unroutableAfterMs?: number;
}

export interface ChaosContext {
  cluster: () => Cluster;
  pods: () => Pod[];
  load: () => ChatLoad;
  /** the gateway's log file (JSON lines) */
  gatewayLog: () => string;
  /** start the pods and the load's client (call from the file's first test) */
  setup(): Promise<Pod[]>;
}

/** rows of this file (each test file runs in a process of its own) */
const rows: ExperimentResult[] = [];

/**
 * One cluster per experiment file: `podCount` engine pods (one process and namespace each), the
 * gateway with short upstream timeouts and info logs, a chat load. Rows are printed at the end.
 */
export interface ChaosOptions {
  podCount?: number;
  gatewayArgs?: string[];
  /** extra environment of the gateway process (e.g. a skewable clock) */
  gatewayEnv?: Record<string, string>;
  /** extra environment of pod k's engine (e.g. a skewable clock) */
  engineEnv?: (k: number) => Record<string, string> | undefined;
  /** extra annotations of pod k (e.g. ports of a relay sidecar in front of its engine) */
  podAnnotations?: (k: number) => Record<string, string> | undefined;
  /** runs once the pods are up, before their streams must be live (e.g. start sidecars) */
  afterPods?: (pods: Pod[]) => Promise<void>;
  /**
   * runs before the gateway starts: where its output goes (an fd, e.g. a slow pipe's) and the
   * file its log lines end up in
   */
  gatewayOutput?: () => Promise<{ output: number; logFile: string }>;
}

export function useChaos(opts: ChaosOptions = {}): ChaosContext {
  const podCount = opts.podCount ?? 4;
  process.env.KVSYNC_E2E_LOG_LEVEL ??= "info";
  let logOverride: string | null = null;
  const gateway: Partial<GatewayOptions> = {
    extraArgs: [
      "--connect-timeout-ms",
      String(CONNECT_TIMEOUT_MS),
      "--headers-timeout-ms",
      String(HEADERS_TIMEOUT_MS),
      "--body-timeout-ms",
      String(HEADERS_TIMEOUT_MS),
      ...(opts.gatewayArgs ?? []),
    ],
    env: opts.gatewayEnv ?? {},
  };
  if (opts.gatewayOutput) {
    // registered before the cluster's hook, so it runs first; the cluster reads `gateway` then
    before(async () => {
      const o = await opts.gatewayOutput!();
      gateway.output = o.output;
      logOverride = o.logFile;
    });
  }
  const cluster = useCluster({ gateway });
  let pods: Pod[] = [];
  let load: ChatLoad | null = null;
  after(async () => {
    await load?.stop();
    printTable("chaos results (this file)", rows);
  });
  return {
    cluster,
    pods: () => pods,
    gatewayLog: () => logOverride ?? gatewayOf(cluster()).process.logFile,
    load: () => {
      if (!load) throw new Error("chaos cluster not set up");
      return load;
    },
    async setup() {
      const c = cluster();
      pods = await Promise.all(
        Array.from({ length: podCount }, (_, k) => {
          const env = opts.engineEnv?.(k);
          return c.createPod(`engine-${k}`, {
            engine: { numGpuBlocks: 768, ...(env ? { env } : {}) },
            annotations: opts.podAnnotations?.(k),
          });
        }),
      );
      await opts.afterPods?.(pods);
      await waitLive(gatewayOf(c), pods);
      load = new ChatLoad(() => gatewayOf(c).url, { model: pods[0].model, concurrency: 4 });
      return pods;
    },
  };
}

function pick(r: RequestRecord[], from: number, to: number): RequestRecord[] {
  return r.filter((x) => x.start >= from && x.start < to);
}

export async function runExperiment(ctx: ChaosContext, spec: ExperimentSpec): Promise<ExperimentResult> {
  const c = ctx.cluster();
  const gw = (): GatewayProcess => gatewayOf(c);
  const load = ctx.load();
  const failures: string[] = [];
  const gwAtStart = gw();
  const pods = () => spec.fault.pods?.() ?? c.list();

  // start from a converged index: an earlier experiment's damage must not be taken for this one's
  await waitLive(gw(), pods()).catch((e: Error) => failures.push(`precondition: ${e.message}`));
  await waitFor("index == truth before the fault", () => compareAllWithTruth(gw(), pods()), {
    timeoutMs: scaled(10_000),
    intervalMs: 200,
  }).catch((e: Error) => failures.push(`precondition (left by an earlier experiment?): ${e.message}`));
  // warm up, then the baseline
  load.start();
  // the first experiment of a file meets a cold gateway (tokenizer workers, connections): the
  // warm-up lasts until requests complete, so the baseline is not taken on a cold start
  const w0 = Date.now();
  await waitFor(
    "warm-up requests complete",
    () => windowStats(load.records, w0, Date.now() + 1).ok >= 20 || "not yet",
    {
      timeoutMs: scaled(30_000),
      intervalMs: 100,
    },
  ).catch((e: Error) => failures.push(`warm-up: ${e.message}`));
  const warmLeft = w0 + scaled(2_000) - Date.now();
  if (warmLeft > 0) await sleep(warmLeft);
  const b0 = Date.now();
  await sleep(scaled(4_000));
  const baseline = windowStats(load.records, b0, Date.now());
  if (baseline.ok === 0)
    failures.push(`no successful request in the baseline window: ${sample(load.records)}`);
  const metricsBefore = await gw().metrics();

  // the fault; the gateway's signals are watched from here on, timed as the harness sees them
  const affected = new Set(spec.fault.affected.map((p) => p.name));
  const logFrom = logMark(ctx.gatewayLog());
  const faultStart = Date.now();
  const watch = new SignalWatch({
    file: ctx.gatewayLog(),
    from: logFrom,
    events: [...spec.events, ...(spec.watchOnly ?? [])],
    pods: affected,
    metrics: spec.metrics,
    metricsBefore,
    scrape: () => gw().metrics(),
  }).start();
  await spec.fault.apply();
  let verified = false;
  try {
    await waitFor(`fault ${spec.id} took effect`, () => spec.fault.verify(), {
      timeoutMs: scaled(10_000),
      intervalMs: 200,
    });
    verified = true;
  } catch (err) {
    failures.push(`fault not verified: ${(err as Error).message}`);
  }
  const holdLeft = faultStart + spec.holdMs - Date.now();
  if (holdLeft > 0) await sleep(holdLeft);
  await spec.fault.remove();
  const faultEnd = Date.now();
  const during = windowStats(load.records, faultStart, faultEnd);

  // recovery: index == truth (with requests flowing) and throughput / hit rate
  let indexRecoveryMs: number | null = null;
  let perfRecoveryMs: number | null = null;
  const deadline = faultEnd + scaled(RECOVERY_BOUND_MS);
  let lastIndex = "never compared";
  while (Date.now() < deadline + WINDOW_MS && (indexRecoveryMs === null || perfRecoveryMs === null)) {
    if (indexRecoveryMs === null && Date.now() < deadline) {
      // recovered = the index matches the engines AND every stream is live again: a `suspect`
      // (or down, replaying) stream's entries do not count for routing even when they match
      const r = await streamsLive(gw(), pods())
        .then((live) => (live === true ? looseCompare(gw(), pods()) : live))
        .catch((e: Error) => `compare failed: ${e.message}`);
      if (r === true) indexRecoveryMs = Date.now() - faultEnd;
      else lastIndex = r;
    }
    if (perfRecoveryMs === null) perfRecoveryMs = perfRecovered(load.records, faultEnd, baseline);
    await sleep(250);
  }
  await load.stop();
  const recovered = Date.now();
  const logTo = logMark(ctx.gatewayLog());
  await watch.stop(logTo);
  if (indexRecoveryMs === null)
    failures.push(`index != truth ${RECOVERY_BOUND_MS / 1000}s after the fault: ${lastIndex}`);
  if (perfRecoveryMs === null) {
    const late = windowStats(load.records, recovered - WINDOW_MS, recovered);
    failures.push(
      `throughput/hit rate not back at 90 % within ${RECOVERY_BOUND_MS / 1000}s: last ${fmt(late)} vs baseline ${fmt(baseline)}`,
    );
  }

  // no corruption: strict equality with the load stopped, then predictions == engine reports. The
  // last requests' events may still be on the wire when the load stops: they get a short bound.
  let strict = await strictDiff(gw(), pods());
  const settleUntil = Date.now() + SETTLE_MS;
  while (strict.text !== true && Date.now() < settleUntil) {
    await sleep(100);
    strict = await strictDiff(gw(), pods());
  }
  if (strict.text !== true)
    failures.push(`index != truth ${SETTLE_MS} ms after the load stopped: ${strict.text}`);
  let predictionMismatches = 0;
  const afterIdx = faultEnd + (indexRecoveryMs ?? RECOVERY_BOUND_MS);
  // sequential probes: nothing else changes the caches between prediction and engine
  for (let k = 0; k < 6; k++) {
    const r = await load.send(load.idleConversation(k));
    if (r.status !== 200)
      failures.push(`post-recovery probe ${k}: ${r.status} ${r.errorMessage ?? r.clientError}`);
    else if (r.matchedTokens !== r.cachedTokens) {
      predictionMismatches++;
      failures.push(
        `post-recovery probe ${k} on ${r.pod}: engine cached ${r.cachedTokens}, gateway predicted ${r.matchedTokens}`,
      );
    }
  }
  // concurrent requests race with each other's stores and evictions: counted, not asserted
  const concurrentMiss = load.records.filter(
    (r) =>
      r.start >= afterIdx && r.end <= recovered && r.status === 200 && r.matchedTokens !== r.cachedTokens,
  ).length;

  // degradation, not outage
  const inFault = pick(load.records, faultStart, faultEnd);
  const judged = pick(load.records, faultStart, recovered);
  for (const r of judged) {
    const where = `request ${r.id} (t+${((r.start - faultStart) / 1000).toFixed(1)}s, pod ${r.pod})`;
    if (r.clientError) failures.push(`${where}: ${r.clientError} (a hang)`);
    else if (r.end - r.start > MAX_REQUEST_MS)
      failures.push(`${where}: took ${r.end - r.start} ms > ${MAX_REQUEST_MS} ms`);
    if (r.status !== 200 && r.status !== 0 && r.errorShape !== "openai")
      failures.push(`${where}: ${r.status} with a non-OpenAI error body: ${r.errorMessage}`);
    const mayFail = r.pod !== null && affected.has(r.pod) && !spec.fault.servesHttp;
    if (r.status !== 200 && !r.clientError && !mayFail)
      failures.push(`${where}: ${r.status} ${r.errorCode} for a healthy pod: ${r.errorMessage}`);
  }
  if (spec.unroutableAfterMs !== undefined) {
    const cut = faultStart + spec.unroutableAfterMs;
    const stuck = inFault.filter((r) => r.start >= cut && r.pod !== null && affected.has(r.pod));
    if (stuck.length)
      failures.push(
        `${stuck.length} request(s) went to a faulted pod more than ${spec.unroutableAfterMs / 1000}s into the fault (e.g. request ${stuck[0].id} → ${stuck[0].pod} at t+${((stuck[0].start - faultStart) / 1000).toFixed(1)}s, ${stuck[0].status})`,
      );
  }
  if (gw() !== gwAtStart || !gw().process.running)
    failures.push(`the gateway did not survive: ${gw().process.describeExit()}`);

  // clear messages: named log events and metrics, each seen after the fault's start; the first
  // one seen times detection (lines are attributed by when they reached the log, not by their
  // `time`: a skewed gateway stamps them ahead)
  for (const e of spec.events) if (!watch.events.has(e)) failures.push(`no "${e}" log event after the fault`);
  const metricsAfter = await gw().metrics();
  for (const m of spec.metrics)
    if (!watch.metrics.has(m) && !(metricGrowth(metricsBefore, metricsAfter, m) > 0))
      failures.push(`metric ${m} did not grow during the experiment`);
  if (spec.events.length + spec.metrics.length === 0 && !spec.undetected)
    failures.push("no signal named for this fault (and no measured reason why there is none)");
  const detect = watch.first();
  if (!verified) failures.unshift("THE FAULT DID NOT TAKE EFFECT");

  const failed = judged.filter((r) => r.status !== 200).length;
  const worst = Math.max(indexRecoveryMs ?? Infinity, perfRecoveryMs ?? Infinity);
  const result: ExperimentResult = {
    id: spec.id,
    group: spec.group,
    title: spec.title,
    detectMs: detect === null ? null : Math.max(0, detect.at - faultStart),
    detectedBy: detect?.signal ?? null,
    ...(spec.undetected ? { undetected: spec.undetected } : {}),
    indexRecoveryMs,
    perfRecoveryMs,
    baseline: { throughput: round(baseline.throughput), hitRate: round(baseline.hitRate) },
    duringFault: { throughput: round(during.throughput), hitRate: round(during.hitRate) },
    requests: judged.length,
    failed,
    slowestMs: Math.max(0, ...judged.map((r) => r.end - r.start)),
    stale: strict.stale,
    missing: strict.missing,
    predictionMismatches: predictionMismatches + concurrentMiss,
    targetMs: spec.targetMs,
    boundMs: RECOVERY_BOUND_MS,
    targetMet: worst <= spec.targetMs,
    passed: failures.length === 0,
    failures: dedupe(failures),
    holdMs: spec.holdMs,
    eventsSeen: warningsIn(ctx.gatewayLog(), { from: logFrom, to: logTo }),
    evidence: spec.fault.evidence ?? null,
    at: new Date(faultStart).toISOString(),
  };
  saveResult(result, judged);
  rows.push(result);
  // the next experiment starts from a full load again
  load.records.length = 0;
  return result;
}

/** Every pod's stream `live` at the gateway, or which are not (suspect, down, replaying...). */
async function streamsLive(gw: GatewayProcess, pods: Pod[]): Promise<true | string> {
  const listed = new Map((await gw.pods()).map((p) => [p.name, p.state]));
  const not = pods.filter((p) => listed.get(p.name) !== "live");
  return not.length === 0
    ? true
    : `not live: ${not.map((p) => `${p.name}=${listed.get(p.name) ?? "absent"}`).join(", ")}`;
}

/** Start of the first rolling window after `from` at >= 90 % of the baseline on both figures. */
function perfRecovered(
  records: RequestRecord[],
  from: number,
  base: { throughput: number; hitRate: number },
): number | null {
  for (let s = from; s + WINDOW_MS <= Date.now(); s += 250) {
    const w = windowStats(records, s, s + WINDOW_MS);
    if (w.throughput >= 0.9 * base.throughput && w.hitRate >= 0.9 * base.hitRate) return s - from;
  }
  return null;
}

async function strictDiff(
  gw: GatewayProcess,
  pods: Pod[],
): Promise<{ text: true | string; stale: number; missing: number }> {
  // the last batches of the stopped load may still be in flight: a short settle, then judge
  await waitFor("index settles", () => compareAllWithTruth(gw, pods), {
    timeoutMs: scaled(5_000),
    intervalMs: 200,
  }).catch(() => {});
  let stale = 0;
  let missing = 0;
  const bad: string[] = [];
  for (const p of pods) {
    const truth = await getJson<BlocksDoc>(`${p.http}/debug/kv-cache`);
    const d = diffBlocks(await gw.podBlocks(p.name), truth);
    stale += d.extra.length;
    missing += d.missing.length + d.tierMismatch.length;
    if (d.extra.length || d.missing.length || d.tierMismatch.length) bad.push(describeDiff(p.name, d));
  }
  return { text: bad.length ? bad.join("; ") : true, stale, missing };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (v: number) => Math.round(v * 1000) / 1000;
const fmt = (w: { throughput: number; hitRate: number }) =>
  `${w.throughput.toFixed(1)} req/s, hit ${(w.hitRate * 100).toFixed(0)} %`;
const sample = (r: RequestRecord[]) =>
  JSON.stringify(r.slice(-2).map((x) => ({ s: x.status, e: x.errorMessage ?? x.clientError })));

function dedupe(f: string[]): string[] {
  // many requests fail the same way: keep the first few of each kind
  const seen = new Map<string, number>();
  const out: string[] = [];
  for (const x of f) {
    const k = x.replace(/request \d+ \(t\+[\d.]+s/, "request").replace(/\d+/g, "#");
    const n = (seen.get(k) ?? 0) + 1;
    seen.set(k, n);
    if (n <= 2) out.push(x);
    else if (n === 3) out.push(`(more like: ${x.slice(0, 120)})`);
  }
  return out;
}
