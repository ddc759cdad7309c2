/**
 * `kvsync eval --live`: a slice of the workload replayed through real mock engines and the real
 * gateway on loopback (src/demo/fleet.ts, the demo's wiring), measured as a client sees it, so
 * the simulator can be checked against it on the same requests, policy and fleet model.
 *
 * - Trace blocks become token blocks: block id `i` is `blockTokens` token ids that are a pure
 *   function of `i` (liveBlockTokens), so equal ids give equal tokens, hence equal engine block
 *   hashes and equal index keys; blocks past a request's `hash_ids` are unique to it.
 * - The engines are configured from the fleet model: block size = `blockTokens`, GPU blocks =
 *   `cacheBlocks`, max_num_seqs = `maxRunning`, max_num_batched_tokens = `tokenBudget`, and the
 *   same step / prefill / decode costs, in real milliseconds.
 * - Arrivals are open-loop: each request is sent at its timestamp, whatever is in flight.
 * - Hit rate = engine-reported `cached_tokens` in whole blocks / prompt blocks (the simulator's
 *   definition, so the two compare); TTFT = request sent → first streamed token.
 */
import { performance } from "node:perf_hooks";
import { Agent } from "undici";
import { type LocalFleet, resetPrefixCaches, startLocalFleet, streamRequest } from "../demo/fleet.ts";
import type { RequestOutcome } from "../demo/report.ts";
import type { PolicyName } from "../routing/index.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { percentileSorted } from "../util/stats.ts";
import { requestOverheads, simulateAsLive } from "./as-live.ts";
import {
  EVAL_POLICIES,
  type EvalPolicy,
  type FleetOptions,
  infiniteCacheHitRate,
  type PolicyResult,
  simulate,
} from "./simulator.ts";

export { placedAs, requestOverheads, sentArrivals, simulateAsLive } from "./as-live.ts";

import { meanRate, type TraceRequest } from "./workload.ts";

export const LIVE_MODEL = "Qwen/Qwen3-0.6B";

/** Token ids of workload blocks: [TOKEN_BASE, TOKEN_BASE + TOKEN_SPAN), inside the model's vocabulary. */
const TOKEN_BASE = 1000;
const TOKEN_SPAN = 100_000;
/** warm-up prompts use ids below TOKEN_BASE, so they share no block with the workload */
const WARM_TOKEN_BASE = 300;

function mix32(x: number): number {
  let h = x | 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Token `k` of workload block `id` (`salt` separates request-private blocks from shared ones). */
function blockTokenAt(id: number, k: number, salt: number): number {
  const h = mix32(mix32(id + salt) ^ mix32(k * 0x9e3779b1 + 1));
  return TOKEN_BASE + (h % TOKEN_SPAN);
}

/**
 * A request's prompt as token ids: `blockTokens` tokens per block id (the last block partial), a
 * pure function of the ids, so two requests share exactly the leading blocks they share in the
 * trace. Blocks the trace does not name are private to request `reqIndex`.
 */
export function liveBlockTokens(r: TraceRequest, blockTokens: number, reqIndex: number): number[] {
  const out = new Array<number>(r.input_length);
  for (let i = 0; i < out.length; i++) {
    const b = Math.floor(i / blockTokens);
    const k = i - b * blockTokens;
    out[i] =
      b < r.hash_ids.length
        ? blockTokenAt(r.hash_ids[b], k, 0)
        : blockTokenAt(reqIndex * 4096 + b, k, 0x5bd1e995);
  }
  return out;
}

export interface LiveOptions {
  fleet: FleetOptions;
  policy: PolicyName;
  /** per-request deadline */
  requestTimeoutMs?: number;
  log?: Logger;
}

export interface LiveResult {
  policy: string;
  requests: number;
  /** requests without a streamed answer (engine refusal, timeout, stream error) */
  errors: number;
  firstError: string | null;
  /** engine-reported cached tokens, in whole blocks / prompt blocks */
  hitRate: number;
  /** Σ cached_tokens / Σ prompt_tokens (the demo's figure) */
  tokenHitRate: number;
  ttftP50Ms: number;
  ttftP90Ms: number;
  ttftP99Ms: number;
  ttftMeanMs: number;
  /** busiest pod's requests over the mean */
  maxMeanLoad: number;
  requestsPerPod: number[];
  /** median of requestOverheadMs */
  overheadMs: number;
  /**
   * each request's overhead outside the engine model (HTTP, gateway, event loops, a loaded
   * machine's scheduling): its live TTFT minus its TTFT in the simulator without overhead on the
   * same arrivals (requestOverheads); the median for a request without a token
   */
  requestOverheadMs: number[];
  /**
   * each request's delay from its last token in the model to its end at the client: live latency
   * minus the zero-overhead simulation's minus half its overhead (a loaded machine stretches the
   * decode and the stream, which keeps requests in flight longer)
   */
  requestEndDelayMs: number[];
  /** first send → last answer */
  wallMs: number;
  /**
   * when each request was actually sent, ms after the first (a loaded client sends late and in
   * bursts): the simulator replays these arrivals to compare like for like (sentArrivals)
   */
  sentAtMs: number[];
  /** each request's TTFT as the client saw it (null: no token) */
  requestTtftMs: Array<number | null>;
  /** each request's latency as the client saw it, send to last byte (null: no answer) */
  requestLatencyMs: Array<number | null>;
  /** the pod that served each request (x-kvsync-pod; null: no answer) */
  requestPod: Array<string | null>;
  /** each request's engine-reported cached tokens in whole blocks (null: no answer) */
  requestHitBlocks: Array<number | null>;
}

/** Replay `reqs` (sorted by timestamp, ms from 0) through a fresh local fleet routed by `policy`. */
export async function runLive(reqs: readonly TraceRequest[], o: LiveOptions): Promise<LiveResult> {
  const f = o.fleet;
  const log = o.log ?? createLogger("eval-live", process.env.KVSYNC_LOG_LEVEL ?? "warn");
  const timeoutMs = o.requestTimeoutMs ?? 120_000;
  const longest = reqs.reduce((m, r) => Math.max(m, r.input_length + r.output_length), 0);
  const tokenizers = new TokenizerRegistry({ pool: false });
  let fleet: LocalFleet | null = null;
  const agent = new Agent({
    connections: 1024,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });
  try {
    fleet = await startLocalFleet({
      engines: f.pods,
      model: LIVE_MODEL,
      policy: o.policy,
      seed: f.seed,
      engine: {
        blockSize: f.blockTokens,
        numGpuBlocks: f.cacheBlocks,
        numCpuBlocks: 0,
        maxModelLen: Math.max(8192, longest + 1),
        maxNumSeqs: f.maxRunning,
        maxNumBatchedTokens: f.tokenBudget,
        maxWaiting: Math.max(4096, reqs.length),
        stepMs: f.stepMs,
        prefillMsPerToken: f.prefillMsPerToken,
        decodeMsPerSeq: f.decodeMsPerSeq,
        loadMsPerToken: 0,
        speed: 1,
      },
      // the simulator's load view has no scraped engine figures: neither has this gateway's
      gateway: { kvAware: f.kvAware, scrapeEngineMetrics: false },
      tokenizers,
      log,
    });
    await warmUp(fleet, agent, f.blockTokens, timeoutMs);
    const url = `${fleet.gw.url}/v1/completions`;
    const outcomes: RequestOutcome[] = new Array(reqs.length);
    const inflight: Array<Promise<void>> = [];
    const sentAtMs = new Array<number>(reqs.length);
    const t0 = performance.now();
    for (let i = 0; i < reqs.length; i++) {
      const r = reqs[i];
      const wait = t0 + (r.timestamp - reqs[0].timestamp) - performance.now();
      if (wait > 1) await new Promise((res) => setTimeout(res, wait));
      sentAtMs[i] = performance.now() - t0;
      const body = {
        model: LIVE_MODEL,
        prompt: liveBlockTokens(r, f.blockTokens, i),
        max_tokens: Math.max(1, r.output_length),
        stream: true,
        stream_options: { include_usage: true },
      };
      inflight.push(
        streamRequest(agent, url, body, timeoutMs).then((x) => {
          outcomes[i] = x;
        }),
      );
    }
    await Promise.all(inflight);
    const wallMs = performance.now() - t0;
    const requestTtftMs = outcomes.map((x) => (x?.ok ? x.ttftMs : null));
    const latencyMs = outcomes.map((x) => (x?.ok ? x.latencyMs : null));
    const requestPod = outcomes.map((x) => (x?.ok ? x.pod : null));
    const over = requestOverheads(reqs, o.policy, f, sentAtMs, requestTtftMs, latencyMs, requestPod);
    return {
      ...summarizeLive(
        o.policy,
        reqs,
        outcomes,
        fleet.pods.map((p) => p.name),
        f.blockTokens,
        wallMs,
      ),
      overheadMs: over.median,
      requestOverheadMs: over.perRequest,
      requestEndDelayMs: over.endDelay,
      sentAtMs,
      requestTtftMs,
      requestLatencyMs: latencyMs,
      requestPod,
      requestHitBlocks: outcomes.map((x) => (x?.ok ? Math.floor(x.cachedTokens / f.blockTokens) : null)),
    };
  } finally {
    await agent.close();
    await fleet?.close();
    await tokenizers.close();
  }
}

/**
 * Warm the processes up (JIT of the engine, gateway and client paths) with prompts that share no
 * block with the workload, then empty the caches: the measured replay starts cold, as the
 * simulator does.
 */
async function warmUp(
  fleet: LocalFleet,
  agent: Agent,
  blockTokens: number,
  timeoutMs: number,
): Promise<void> {
  const url = `${fleet.gw.url}/v1/completions`;
  const rs = await Promise.all(
    Array.from({ length: 2 * fleet.engines.length }, (_, i) =>
      streamRequest(
        agent,
        url,
        {
          model: LIVE_MODEL,
          prompt: Array.from(
            { length: 2 * blockTokens + 1 },
            (_, k) => WARM_TOKEN_BASE + ((i * 7 + k) % 600),
          ),
          max_tokens: 2,
          stream: true,
          stream_options: { include_usage: true },
        },
        timeoutMs,
      ),
    ),
  );
  const bad = rs.find((r) => !r.ok);
  if (bad) throw new Error(`warm-up request failed: ${bad.error ?? `HTTP ${bad.status}`}`);
  await resetPrefixCaches(fleet);
}

export function summarizeLive(
  policy: string,
  reqs: readonly TraceRequest[],
  outcomes: readonly RequestOutcome[],
  pods: readonly string[],
  blockTokens: number,
  wallMs: number,
): Omit<
  LiveResult,
  | "overheadMs"
  | "requestOverheadMs"
  | "requestEndDelayMs"
  | "sentAtMs"
  | "requestTtftMs"
  | "requestLatencyMs"
  | "requestPod"
  | "requestHitBlocks"
> {
  let blocks = 0;
  let hit = 0;
  let prompt = 0;
  let cached = 0;
  let errors = 0;
  let firstError: string | null = null;
  const ttft: number[] = [];
  const perPod = new Map(pods.map((p) => [p, 0]));
  for (let i = 0; i < reqs.length; i++) {
    blocks += reqs[i].hash_ids.length;
    const x = outcomes[i];
    if (x === undefined || !x.ok) {
      errors++;
      firstError ??= x?.error ?? "no outcome";
      continue;
    }
    hit += Math.floor(x.cachedTokens / blockTokens);
    prompt += x.promptTokens;
    cached += x.cachedTokens;
    if (x.ttftMs !== null) ttft.push(x.ttftMs);
    if (x.pod !== null) perPod.set(x.pod, (perPod.get(x.pod) ?? 0) + 1);
  }
  ttft.sort((a, b) => a - b);
  const counts = [...perPod.values()];
  const mean = reqs.length / Math.max(1, pods.length);
  return {
    policy,
    requests: reqs.length,
    errors,
    firstError,
    hitRate: blocks > 0 ? hit / blocks : 0,
    tokenHitRate: prompt > 0 ? cached / prompt : 0,
    ttftP50Ms: percentileSorted(ttft, 0.5),
    ttftP90Ms: percentileSorted(ttft, 0.9),
    ttftP99Ms: percentileSorted(ttft, 0.99),
    ttftMeanMs: ttft.length > 0 ? ttft.reduce((a, b) => a + b, 0) / ttft.length : Number.NaN,
    maxMeanLoad: mean > 0 ? Math.max(...counts) / mean : 0,
    requestsPerPod: counts,
    wallMs,
  };
}

/** The policies a live fleet can run (the oracle and the bound are simulator-only references). */
export const LIVE_POLICIES = EVAL_POLICIES.filter((p): p is EvalPolicy & PolicyName => p !== "oracle");

export interface LiveEvalResult {
  mode: "live";
  workload: { source: string; requests: number; ratePerSecond: number; spanMs: number };
  fleet: FleetOptions;
  requests: number;
  infiniteCacheHitRate: number;
  /** measured on the live fleet (hitRate, ttftP50Ms, ttftP90Ms, ttftP99Ms, maxMeanLoad as in a simulated run) */
  policies: Record<string, LiveResult>;
  /** the simulator on the same requests and fleet model */
  simulated: Record<string, PolicyResult>;
  /** |simulated hit rate - live| / live, per live policy */
  hitRateRelativeError: Record<string, number>;
  wallMs: number;
}

/** Each deployable policy of `policies` live, then every one of them in the simulator, on `reqs`. */
export async function evaluateLive(
  reqs: readonly TraceRequest[],
  source: string,
  fleet: FleetOptions,
  policies: readonly EvalPolicy[],
  o: {
    requestTimeoutMs?: number;
    log?: Logger;
    onResult?: (live: LiveResult | null, sim: PolicyResult) => void;
  } = {},
): Promise<LiveEvalResult> {
  const t0 = performance.now();
  const live: Record<string, LiveResult> = {};
  const simulated: Record<string, PolicyResult> = {};
  const err: Record<string, number> = {};
  let overheadMs = fleet.overheadMs;
  for (const p of policies) {
    let l: LiveResult | null = null;
    if ((LIVE_POLICIES as readonly string[]).includes(p)) {
      l = await runLive(reqs, {
        fleet,
        policy: p as PolicyName,
        requestTimeoutMs: o.requestTimeoutMs,
        log: o.log,
      });
      live[p] = l;
    }
    // the simulator replays the live run's arrivals and overheads; the oracle, the trace's arrivals
    // with the last live run's median overhead
    if (l !== null) overheadMs = l.overheadMs;
    simulated[p] =
      l !== null ? simulateAsLive(reqs, p, fleet, l) : simulate(reqs, p, { ...fleet, overheadMs });
    if (l !== null)
      err[p] = l.hitRate > 0 ? Math.abs(simulated[p].hitRate - l.hitRate) / l.hitRate : Number.NaN;
    o.onResult?.(l, simulated[p]);
  }
  return {
    mode: "live",
    workload: {
      source,
      requests: reqs.length,
      ratePerSecond: meanRate(reqs),
      spanMs: reqs.length > 0 ? reqs[reqs.length - 1].timestamp - reqs[0].timestamp : 0,
    },
    fleet,
    requests: reqs.length,
    infiniteCacheHitRate: infiniteCacheHitRate(reqs, fleet.blockTokens),
    policies: live,
    simulated,
    hitRateRelativeError: err,
    wallMs: performance.now() - t0,
  };
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : "-");

/** Live against simulated, one row per policy. */
export function formatLiveTable(r: LiveEvalResult): string {
  const header = [
    "policy",
    "errors",
    "hit live",
    "hit sim",
    "rel. err",
    "TTFT p50 live",
    "sim",
    "TTFT p90 live",
    "sim",
    "max/mean live",
    "sim",
  ];
  const rows = [header];
  for (const [p, s] of Object.entries(r.simulated)) {
    const l = r.policies[p];
    rows.push([
      p,
      l ? String(l.errors) : "-",
      l ? pct(l.hitRate) : "-",
      pct(s.hitRate),
      l ? pct(r.hitRateRelativeError[p]) : "-",
      l ? ms(l.ttftP50Ms) : "-",
      ms(s.ttftP50Ms),
      l ? ms(l.ttftP90Ms) : "-",
      ms(s.ttftP90Ms),
      l ? l.maxMeanLoad.toFixed(2) : "-",
      s.maxMeanLoad.toFixed(2),
    ]);
  }
  rows.push(["infinite cache", "", "", pct(r.infiniteCacheHitRate), "", "", "", "", "", "", ""]);
  const widths = header.map((_, i) => Math.max(...rows.map((x) => x[i].length)));
  return rows
    .map((row) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "))
    .join("\n");
}
