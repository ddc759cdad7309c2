/**
 * A local fleet on loopback, in this process: mock engines (src/engine/) with KV events on
 * ephemeral ZeroMQ ports and the real gateway (`startGateway`, a fixed pod list) subscribed to
 * them; plus the streaming client that measures it. `kvsync demo` and `kvsync eval --live` both
 * run on it.
 */
import { performance } from "node:perf_hooks";
import { Agent, request } from "undici";
import type { PodInfo } from "../discovery/types.ts";
import type { EngineOptions } from "../engine/options.ts";
import { type RunningEngine, startEngine } from "../engine/start.ts";
import { type RunningGateway, type StartGatewayOptions, startGateway } from "../gateway/gateway.ts";
import type { PolicyName } from "../routing/index.ts";
import type { TokenizerRegistry } from "../tokenize/registry.ts";
import type { Logger } from "../util/log.ts";
import { waitFor } from "../util/wait.ts";
import type { RequestOutcome } from "./report.ts";

export interface LocalFleetOptions {
  engines: number;
  model: string;
  policy: PolicyName;
  seed: number;
  /** engine options every engine gets (block size, cache, timing, ...) */
  engine?: Partial<EngineOptions>;
  /** gateway options beyond pods, policy and seed (e.g. kvAware) */
  gateway?: Omit<StartGatewayOptions, "pods" | "policy" | "seed" | "tokenizers" | "log">;
  tokenizers: TokenizerRegistry;
  log: Logger;
}

export interface LocalFleet {
  engines: RunningEngine[];
  pods: PodInfo[];
  gw: RunningGateway;
  close(): Promise<void>;
}

/** Start the engines and the gateway; resolves once every engine's KV event stream is live. */
export async function startLocalFleet(o: LocalFleetOptions): Promise<LocalFleet> {
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
          ...o.engine,
          host: "127.0.0.1",
          port: 0,
          eventsEndpoint: "tcp://127.0.0.1:*",
          replayEndpoint: "tcp://127.0.0.1:*",
          model: o.model,
          seed: o.seed * 31 + i,
          replicaIndex: i,
          log: o.log.child({ engine: i }),
        }),
      );
    }
    const pods: PodInfo[] = engines.map((e, i) => ({
      name: `pod-${i}`,
      model: o.model,
      loras: [],
      http: e.httpUrl,
      events: e.eventsEndpoint,
      replay: e.replayEndpoint,
      dataParallelSize: 1,
      ready: true,
      blockSize: e.engine.o.blockSize,
    }));
    gw = await startGateway({
      adminPort: null,
      ...o.gateway,
      pods,
      policy: o.policy,
      seed: o.seed,
      tokenizers: o.tokenizers,
      log: o.log.child({ component: "gateway" }),
    });
    const g = gw;
    await waitFor(
      "every engine's KV event stream live at the gateway",
      () => pods.every((p) => g.subscribers?.status(p.name)?.state === "live"),
      15_000,
    );
    return { engines, pods, gw: g, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Empty every engine's prefix cache (`/reset_prefix_cache`, after its queue drained) and wait
 * until the gateway's index has followed, so a measured run starts from cold caches.
 */
export async function resetPrefixCaches(fleet: LocalFleet): Promise<void> {
  const agent = new Agent({ connections: 2 });
  try {
    for (const e of fleet.engines) {
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
    () => fleet.gw.index.stats().entries === 0,
    10_000,
  );
}

interface StreamChunk {
  choices?: Array<{
    text?: string;
    delta?: { content?: string | null };
    finish_reason?: string | null;
  }>;
  usage?: {
    prompt_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number } | null;
  } | null;
  error?: { message?: string };
}

/**
 * One streaming request (`/v1/chat/completions` or `/v1/completions`, `stream_options.include_usage`
 * set by the caller). TTFT = request sent → first chunk carrying a generated token (chat: non-empty
 * content, since the first chunk only announces the role; completions: a text chunk before the
 * finish); usage from the final chunk; the pod from `x-kvsync-pod`.
 */
export async function streamRequest(
  agent: Agent,
  url: string,
  body: Record<string, unknown>,
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
    const res = await request(url, {
      method: "POST",
      dispatcher: agent,
      signal: ac.signal,
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
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
          const j = JSON.parse(data) as StreamChunk;
          if (j.error) throw new Error(`stream error: ${j.error.message ?? "unknown"}`);
          const ch = j.choices?.[0];
          const c = ch?.delta?.content;
          const token =
            (typeof c === "string" && c.length > 0) ||
            (typeof ch?.text === "string" && (ch.finish_reason ?? null) === null);
          if (token) {
            if (out.ttftMs === null) out.ttftMs = performance.now() - t0;
            parts.push(typeof c === "string" ? c : (ch?.text as string));
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
