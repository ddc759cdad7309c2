/**
 * `kvsync demo`: a local fleet (mock engines + the gateway, in this process, on loopback) driven
 * by the multi-turn chat workload once per routing policy, with fresh engines (empty caches)
 * for each policy, and the same workload (same seed) every time.
 */

import { performance } from "node:perf_hooks";
import { Agent } from "undici";
import { isPolicyName, type PolicyName } from "../routing/index.ts";
import { TokenizerPool } from "../tokenize/pool.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { exerciseEndpoints } from "./endpoints.ts";
import { type LocalFleet, resetPrefixCaches, startLocalFleet, streamRequest } from "./fleet.ts";
import { type PolicyResult, type RequestOutcome, summarize } from "./report.ts";
import { type Conversation, generateWorkload, type Workload, type WorkloadOptions } from "./workload.ts";

export const DEMO_MODEL = "Qwen/Qwen3-0.6B";

export interface DemoOptions {
  requests: number;
  concurrency: number;
  seed: number;
  engines: number;
  policies: PolicyName[];
  /** engine timing-model speed-up (1 = the mock engine's default timing) */
  speed: number;
  /** GPU KV blocks per engine (16 tokens each): small, so eviction matters */
  gpuBlocks: number;
  /** progress line every this many requests (0 = none) */
  progressEvery: number;
  /** per-request deadline */
  requestTimeoutMs: number;
  /** gateway tokenizer worker pool (default on) */
  tokenizerPool: boolean;
  /** workload shape overrides */
  workload?: Partial<Omit<WorkloadOptions, "seed" | "requests">>;
  /** stops starting new conversations (requests in flight finish), then cleans up */
  signal?: AbortSignal;
  /** where progress lines go (default stderr) */
  progress?: (line: string) => void;
  /**
   * the gateway's admin port, where the dashboard is (`GET /`): every policy's gateway binds it in
   * turn on 127.0.0.1, so one URL shows the whole run; null = no admin API
   */
  adminPort: number | null;
  /** logger for engines and gateway (default: silent, so the console stays a progress view; KVSYNC_LOG_LEVEL sets a level) */
  log?: Logger;
}

export const DEMO_DEFAULTS: Omit<DemoOptions, "policies"> & { policies: PolicyName[] } = {
  requests: 800,
  concurrency: 32,
  seed: 1,
  engines: 4,
  policies: ["kv-aware", "round-robin"],
  speed: 1,
  gpuBlocks: 768,
  progressEvery: 0,
  requestTimeoutMs: 120_000,
  tokenizerPool: true,
  adminPort: null,
};

export interface DemoResult {
  model: string;
  options: {
    requests: number;
    concurrency: number;
    seed: number;
    engines: number;
    speed: number;
    gpuBlocks: number;
    tenants: number;
    conversations: number;
  };
  results: PolicyResult[];
}

export function validateDemo(o: DemoOptions): void {
  const int = (name: "requests" | "concurrency" | "engines" | "gpuBlocks", min: number) => {
    if (!Number.isInteger(o[name]) || o[name] < min)
      throw new Error(`${name} must be an integer >= ${min}, got ${o[name]}`);
  };
  int("requests", 1);
  int("concurrency", 1);
  int("engines", 1);
  int("gpuBlocks", 64);
  if (o.engines > 64) throw new Error(`engines must be <= 64, got ${o.engines}`);
  if (o.concurrency > 1024) throw new Error(`concurrency must be <= 1024, got ${o.concurrency}`);
  if (!(o.speed > 0)) throw new Error(`speed must be > 0, got ${o.speed}`);
  if (o.policies.length === 0) throw new Error("at least one policy");
  for (const p of o.policies) if (!isPolicyName(p)) throw new Error(`unknown policy ${p}`);
}

export async function startFleet(
  o: DemoOptions,
  policy: PolicyName,
  tokenizers: TokenizerRegistry,
  log: Logger,
): Promise<LocalFleet> {
  const fleet = await startLocalFleet({
    engines: o.engines,
    model: DEMO_MODEL,
    policy,
    seed: o.seed,
    engine: { numGpuBlocks: o.gpuBlocks, speed: o.speed },
    tokenizers,
    log,
    ...(o.adminPort !== null ? { gateway: { adminHost: "127.0.0.1", adminPort: o.adminPort } } : {}),
  });
  try {
    await warmUp(o, fleet);
    return fleet;
  } catch (err) {
    await fleet.close();
    throw err;
  }
}

/**
 * Warm the fleet up (JIT, chat template, the gateway's tokenizer workers) with short prompts that
 * share nothing with the workload, then empty every engine's prefix cache: each policy starts
 * from cold caches but a warm process, so the first policy run is not penalised.
 */
async function warmUp(o: DemoOptions, fleet: LocalFleet): Promise<void> {
  const agent = new Agent({ connections: 8 });
  try {
    // first turns of another seed's conversations: as long as the workload's, sharing nothing with it
    const w = generateWorkload({
      ...o.workload,
      seed: o.seed + 7919,
      requests: Math.max(8, Math.min(o.concurrency, 32)),
      minTurns: 1,
      maxTurns: 1,
    });
    const rs = await Promise.all(
      w.conversations.map((c) =>
        streamChat(
          agent,
          fleet.gw.url,
          [
            { role: "system", content: c.system },
            { role: "user", content: c.turns[0].user },
          ],
          4,
          o.requestTimeoutMs,
        ),
      ),
    );
    const bad = rs.find((r) => !r.ok);
    if (bad) throw new Error(`warm-up request failed: ${bad.error ?? `HTTP ${bad.status}`}`);
    await exerciseEndpoints(fleet.gw.url, DEMO_MODEL, o.requestTimeoutMs);
  } finally {
    await agent.close();
  }
  await resetPrefixCaches(fleet);
}

interface ChatMsg {
  role: "system" | "user" | "assistant";
  content: string;
}

/** One streaming chat request: TTFT = first chunk carrying content; usage from the final chunk. */
export function streamChat(
  agent: Agent,
  baseUrl: string,
  messages: ChatMsg[],
  maxTokens: number,
  timeoutMs: number,
): Promise<RequestOutcome> {
  return streamRequest(
    agent,
    `${baseUrl}/v1/chat/completions`,
    {
      model: DEMO_MODEL,
      messages,
      max_tokens: maxTokens,
      stream: true,
      stream_options: { include_usage: true },
    },
    timeoutMs,
  );
}

/** Drive the workload through `baseUrl` with `concurrency` conversations in flight. */
export async function drive(
  w: Workload,
  baseUrl: string,
  o: DemoOptions,
  policy: string,
  progress: (line: string) => void,
  onOutcome?: (r: RequestOutcome) => void,
): Promise<{ outcomes: RequestOutcome[]; skipped: number; durationS: number }> {
  const agent = new Agent({
    connections: o.concurrency + 4,
    headersTimeout: o.requestTimeoutMs,
    bodyTimeout: o.requestTimeoutMs,
  });
  const outcomes: RequestOutcome[] = [];
  let skipped = 0;
  let next = 0;
  const t0 = performance.now();
  const report = () => {
    if (o.progressEvery <= 0) return;
    const n = outcomes.length + skipped;
    if (n % o.progressEvery !== 0 && n !== w.requests) return;
    const ok = outcomes.filter((x) => x.ok);
    const prompt = ok.reduce((a, x) => a + x.promptTokens, 0);
    const cached = ok.reduce((a, x) => a + x.cachedTokens, 0);
    const el = (performance.now() - t0) / 1000;
    progress(
      `[${policy}] ${String(n).padStart(String(w.requests).length)}/${w.requests} requests` +
        `  hit rate ${prompt ? ((cached / prompt) * 100).toFixed(1) : "0.0"} %` +
        `  errors ${n - ok.length}  ${(ok.length / Math.max(el, 1e-3)).toFixed(1)} req/s  ${el.toFixed(1)} s`,
    );
  };
  const runConversation = async (c: Conversation) => {
    const history: ChatMsg[] = [{ role: "system", content: c.system }];
    for (let t = 0; t < c.turns.length; t++) {
      if (o.signal?.aborted) return;
      history.push({ role: "user", content: c.turns[t].user });
      const r = await streamChat(agent, baseUrl, history, c.turns[t].maxTokens, o.requestTimeoutMs);
      outcomes.push(r);
      onOutcome?.(r);
      if (!r.ok) {
        // without the reply the rest of the conversation cannot be sent as it would have been
        skipped += c.turns.length - t - 1;
        report();
        return;
      }
      history.push({ role: "assistant", content: r.content });
      report();
    }
  };
  const worker = async () => {
    while (next < w.conversations.length && !o.signal?.aborted)
      await runConversation(w.conversations[next++]);
  };
  try {
    await Promise.all(Array.from({ length: Math.min(o.concurrency, w.conversations.length) }, worker));
  } finally {
    await agent.close();
  }
  return { outcomes, skipped, durationS: (performance.now() - t0) / 1000 };
}

async function runPolicy(
  w: Workload,
  o: DemoOptions,
  policy: PolicyName,
  tokenizers: TokenizerRegistry,
  log: Logger,
  progress: (line: string) => void,
): Promise<PolicyResult> {
  progress(`[${policy}] starting ${o.engines} mock engines + gateway (fresh caches)`);
  const fleet = await startFleet(o, policy, tokenizers, log);
  try {
    const d = await drive(w, fleet.gw.url, o, policy, progress);
    const errs = d.outcomes.filter((x) => !x.ok);
    if (errs.length > 0) {
      progress(
        `[${policy}] ${errs.length} failed requests, first: ${errs[0].error ?? `HTTP ${errs[0].status}`}`,
      );
    }
    return summarize(
      policy,
      fleet.pods.map((p) => p.name),
      d.outcomes,
      d.skipped,
      d.durationS,
    );
  } finally {
    await fleet.close();
  }
}

/** The demo's logger: silent unless KVSYNC_LOG_LEVEL asks for lines (JSON on stderr). */
export function demoLogger(): Logger {
  return createLogger("demo", process.env.KVSYNC_LOG_LEVEL || "silent");
}

/** Run the demo: one fresh fleet and one pass of the same workload per policy. */
export async function runDemo(opts: Partial<DemoOptions> = {}): Promise<DemoResult> {
  const o: DemoOptions = { ...DEMO_DEFAULTS, ...opts };
  validateDemo(o);
  const log = o.log ?? demoLogger();
  const progress = o.progress ?? ((l: string) => process.stderr.write(`${l}\n`));
  const w = generateWorkload({ seed: o.seed, requests: o.requests, ...o.workload });
  const results: PolicyResult[] = [];
  // one tokenizer (worker pool) for every policy's gateway, warmed before the first run
  const tokenizers = new TokenizerRegistry({ pool: o.tokenizerPool ? {} : false });
  try {
    const t = await tokenizers.get(DEMO_MODEL);
    if (t instanceof TokenizerPool) await t.warm();
    for (const policy of o.policies) {
      if (o.signal?.aborted) break;
      results.push(await runPolicy(w, o, policy, tokenizers, log, progress));
    }
  } finally {
    await tokenizers.close();
  }
  return {
    model: DEMO_MODEL,
    options: {
      requests: o.requests,
      concurrency: o.concurrency,
      seed: o.seed,
      engines: o.engines,
      speed: o.speed,
      gpuBlocks: o.gpuBlocks,
      tenants: w.tenants.length,
      conversations: w.conversations.length,
    },
    results,
  };
}
