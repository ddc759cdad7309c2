/**
 * `kvsync demo`: a local fleet (mock engines + the gateway, in this process, on loopback) driven
 * by the multi-turn chat workload once per routing policy, with fresh engines (empty caches)
 * for each policy, and the same workload (same seed) every time.
 */
import { performance } from "node:perf_hooks";
import { Agent, request } from "undici";
import type { PodInfo } from "../discovery/types.ts";
import { type RunningEngine, startEngine } from "../engine/start.ts";
import { type RunningGateway, startGateway } from "../gateway/gateway.ts";
import { isPolicyName, type PolicyName } from "../routing/index.ts";
import { TokenizerPool } from "../tokenize/pool.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { waitFor } from "../util/wait.ts";
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
  /** logger for engines and gateway (default: warn level) */
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

interface Fleet {
  engines: RunningEngine[];
  pods: PodInfo[];
  gw: RunningGateway;
  close(): Promise<void>;
}

async function startFleet(
  o: DemoOptions,
  policy: PolicyName,
  tokenizers: TokenizerRegistry,
  log: Logger,
): Promise<Fleet> {
  const engines: RunningEngine[] = [];
  let gw: RunningGateway | null = null;
  const close = async () => {
    await gw?.close();
    await Promise.allSettled(engines.map((e) => e.close()));
  };
  try {
    for (let i = 0; i < o.engines; i++) {
      engines.push(
        await startEngine({
          host: "127.0.0.1",
          port: 0,
          eventsEndpoint: "tcp://127.0.0.1:*",
          replayEndpoint: "tcp://127.0.0.1:*",
          model: DEMO_MODEL,
          numGpuBlocks: o.gpuBlocks,
          speed: o.speed,
          seed: o.seed * 31 + i,
          replicaIndex: i,
          log: log.child({ engine: i }),
        }),
      );
    }
    const pods: PodInfo[] = engines.map((e, i) => ({
      name: `pod-${i}`,
      model: DEMO_MODEL,
      loras: [],
      http: e.httpUrl,
      events: e.eventsEndpoint,
      replay: e.replayEndpoint,
      dataParallelSize: 1,
      ready: true,
      blockSize: e.engine.o.blockSize,
    }));
    gw = await startGateway({
      pods,
      policy,
      seed: o.seed,
      adminPort: null,
      tokenizers,
      log: log.child({ component: "gateway" }),
    });
    const g = gw;
    await waitFor(
      "every engine's KV event stream live at the gateway",
      () => pods.every((p) => g.subscribers?.status(p.name)?.state === "live"),
      15_000,
    );
    await warmUp(o, engines, g);
    return { engines, pods, gw: g, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Warm the fleet up (JIT, chat template, the gateway's tokenizer workers) with short prompts that
 * share nothing with the workload, then empty every engine's prefix cache (`/reset_prefix_cache`)
 * and wait until the gateway's index has followed: each policy starts from cold caches but a warm
 * process, so the first policy run is not penalised.
 */
async function warmUp(o: DemoOptions, engines: RunningEngine[], gw: RunningGateway): Promise<void> {
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
          gw.url,
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
    for (const e of engines) {
      await e.engine.quiesce();
      const r = await request(`${e.httpUrl}/reset_prefix_cache`, { method: "POST", dispatcher: agent });
      const text = await r.body.text();
      if (r.statusCode !== 200)
        throw new Error(`reset_prefix_cache on ${e.httpUrl}: HTTP ${r.statusCode} ${text}`);
    }
  } finally {
    await agent.close();
  }
  await waitFor(
    "the gateway's index to follow the cache resets",
    () => gw.index.stats().entries === 0,
    10_000,
  );
}

interface ChatMsg {
  role: "system" | "user" | "assistant";
  content: string;
}

/** One streaming chat request: TTFT = first chunk carrying content; usage from the final chunk. */
export async function streamChat(
  agent: Agent,
  baseUrl: string,
  messages: ChatMsg[],
  maxTokens: number,
  timeoutMs: number,
): Promise<RequestOutcome> {
  const t0 = performance.now();
  const out: RequestOutcome = {
    ok: false,
    status: 0,
    pod: null,
    ttftMs: null,
    latencyMs: 0,
    promptTokens: 0,
    cachedTokens: 0,
    content: "",
  };
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`request timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    const res = await request(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      dispatcher: agent,
      signal: ac.signal,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: DEMO_MODEL,
        messages,
        max_tokens: maxTokens,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    out.status = res.statusCode;
    const pod = res.headers["x-kvsync-pod"];
    out.pod = typeof pod === "string" ? pod : null;
    if (res.statusCode !== 200) {
      out.error = `HTTP ${res.statusCode}: ${(await res.body.text()).slice(0, 200)}`;
      return out;
    }
    let buf = "";
    let done = false;
    let usageSeen = false;
    const parts: string[] = [];
    for await (const chunk of res.body) {
      buf += chunk.toString("utf8");
      let i = buf.indexOf("\n\n");
      while (i !== -1) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        i = buf.indexOf("\n\n");
        for (const line of ev.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") {
            done = true;
            continue;
          }
          const j = JSON.parse(data) as {
            choices?: Array<{ delta?: { content?: string | null } }>;
            usage?: {
              prompt_tokens?: number;
              prompt_tokens_details?: { cached_tokens?: number } | null;
            } | null;
            error?: { message?: string };
          };
          if (j.error) throw new Error(`stream error: ${j.error.message ?? "unknown"}`);
          const c = j.choices?.[0]?.delta?.content;
          if (typeof c === "string" && c.length > 0) {
            if (out.ttftMs === null) out.ttftMs = performance.now() - t0;
            parts.push(c);
          }
          if (j.usage) {
            usageSeen = true;
            out.promptTokens = j.usage.prompt_tokens ?? 0;
            out.cachedTokens = j.usage.prompt_tokens_details?.cached_tokens ?? 0;
          }
        }
      }
      if (buf.length > 1 << 20) throw new Error("SSE event larger than 1 MiB");
    }
    if (!done) throw new Error("stream ended without [DONE]");
    if (!usageSeen) throw new Error("stream carried no usage chunk");
    out.content = parts.join("");
    out.ok = true;
  } catch (err) {
    out.error = err instanceof Error ? err.message : String(err);
  } finally {
    clearTimeout(timer);
    out.latencyMs = performance.now() - t0;
  }
  return out;
}

/** Drive the workload through `baseUrl` with `concurrency` conversations in flight. */
async function drive(
  w: Workload,
  baseUrl: string,
  o: DemoOptions,
  policy: string,
  progress: (line: string) => void,
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

/** Run the demo: one fresh fleet and one pass of the same workload per policy. */
export async function runDemo(opts: Partial<DemoOptions> = {}): Promise<DemoResult> {
  const o: DemoOptions = { ...DEMO_DEFAULTS, ...opts };
  validateDemo(o);
  const log = o.log ?? createLogger("demo", process.env.KVSYNC_LOG_LEVEL ?? "warn");
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
