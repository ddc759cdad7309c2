import { join } from "node:path";
import type { Writable } from "node:stream";
import { childEnv, ManagedProcess } from "../../../harness/proc.ts";
import { freePort } from "../../../src/util/free-port.ts";
import { CLI } from "./cluster.ts";
import { answers, getJson, getText, postJson } from "./http.ts";
import { RUN_ENV } from "./netns.ts";
import type { BlocksDoc, IndexReader } from "./truth.ts";
import { scaled, WaitAborted, waitFor } from "./wait.ts";

export interface GatewayOptions {
  kubeconfig: string;
  logDir: string;
  policy: string;
  /** `--tokenizer <model>=<dir>` entries */
  tokenizers: Record<string, string>;
  extraArgs: string[];
  /** extra environment for the gateway process (e.g. LD_PRELOAD=libfaketime for a skewed clock) */
  env: Record<string, string>;
  /** where its stdout/stderr (the pino log) go instead of the log file: an fd or stream (a pipe's writable end) */
  output: number | Writable;
}

export interface AdminPod {
  name: string;
  model: string;
  lora?: string | null;
  state: string;
  lastSeq: number | null;
  eventsApplied: number;
  blocks: number;
  [k: string]: unknown;
}

export interface RoutedResponse {
  status: number;
  /** x-kvsync-pod */
  pod: string | null;
  /** x-kvsync-matched-tokens */
  matchedTokens: number | null;
  promptTokens: number;
  /** engine-reported usage.prompt_tokens_details.cached_tokens */
  cachedTokens: number;
  ms: number;
  body: unknown;
}

interface Usage {
  prompt_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

/** `kvsync gateway` as a child process in the root namespace, and a client for it. */
export class GatewayProcess implements IndexReader {
  private constructor(
    readonly process: ManagedProcess,
    readonly port: number,
    readonly adminPort: number,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get adminUrl(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  /** Start it; retried with other ports if one was taken between probing and binding. */
  static async start(
    o: Partial<GatewayOptions> & { kubeconfig: string; logDir: string },
  ): Promise<GatewayProcess> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await GatewayProcess.startOnce(o);
      } catch (err) {
        if (attempt >= 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
      }
    }
  }

  private static async startOnce(
    o: Partial<GatewayOptions> & { kubeconfig: string; logDir: string },
  ): Promise<GatewayProcess> {
    const port = await freePort();
    const adminPort = await freePort();
    const args = [
      "--import",
      "tsx",
      CLI,
      "gateway",
      "--discovery",
      "kubernetes",
      "--kubeconfig",
      o.kubeconfig,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--admin-port",
      String(adminPort),
      "--policy",
      o.policy ?? "kv-aware",
    ];
    for (const [model, dir] of Object.entries(o.tokenizers ?? {}))
      args.push("--tokenizer", `${model}=${dir}`);
    args.push(...(o.extraArgs ?? []));
    const proc = new ManagedProcess(
      "gateway",
      process.execPath,
      args,
      join(o.logDir, `gateway-${port}.log`),
      { ...childEnv(RUN_ENV, String(process.pid)), ...o.env },
      { output: o.output },
    );
    const gw = new GatewayProcess(proc, port, adminPort);
    await waitFor(
      `gateway admin ${gw.adminUrl}/admin/pods answers`,
      async () => {
        if (!proc.running) throw new WaitAborted(`gateway ${proc.describeExit()}`);
        return (await answers(`${gw.adminUrl}/admin/pods`)) ? true : "no answer yet";
      },
      { timeoutMs: scaled(60_000), intervalMs: 100 },
    ).catch(async (err: Error) => {
      await proc.stop();
      throw new Error(`${err.message}\nlog ${proc.logFile} tail:\n${proc.tail(3000)}`);
    });
    return gw;
  }

  async stop(): Promise<void> {
    await this.process.stop();
  }

  async pods(): Promise<AdminPod[]> {
    const r = await getJson<AdminPod[] | { pods: AdminPod[] }>(`${this.adminUrl}/admin/pods`);
    return Array.isArray(r) ? r : r.pods;
  }

  async pod(name: string): Promise<AdminPod | undefined> {
    return (await this.pods()).find((p) => p.name === name);
  }

  podBlocks(name: string): Promise<BlocksDoc> {
    return getJson<BlocksDoc>(`${this.adminUrl}/admin/pods/${encodeURIComponent(name)}/blocks`);
  }

  async match(
    model: string,
    prompt: string,
    lora?: string,
  ): Promise<{
    blockSize: number;
    pods: Array<{ pod: string; matchedBlocks: number; matchedTokens: number }>;
  }> {
    const body: Record<string, unknown> = { model, prompt };
    if (lora) body.lora = lora;
    const r = await postJson<{
      blockSize: number;
      pods: Array<{ pod: string; matchedBlocks: number; matchedTokens: number }>;
    }>(`${this.adminUrl}/admin/index/match`, body);
    if (r.status !== 200) throw new Error(`match → ${r.status}: ${JSON.stringify(r.body).slice(0, 300)}`);
    return r.body;
  }

  metrics(): Promise<string> {
    return getText(`${this.adminUrl}/metrics`);
  }

  /** POST /v1/completions (non-streaming); returns who served it and the engine's usage. */
  async complete(model: string, prompt: string, maxTokens = 4): Promise<RoutedResponse> {
    const r = await postJson<{ usage?: Usage; error?: unknown }>(`${this.url}/v1/completions`, {
      model,
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
    });
    return toRouted(r.status, r.headers, r.body, r.ms);
  }

  async chat(
    model: string,
    messages: Array<{ role: string; content: string }>,
    maxTokens = 4,
  ): Promise<RoutedResponse> {
    const r = await postJson<{ usage?: Usage }>(`${this.url}/v1/chat/completions`, {
      model,
      messages,
      max_tokens: maxTokens,
      temperature: 0,
    });
    return toRouted(r.status, r.headers, r.body, r.ms);
  }
}

function toRouted(status: number, headers: Headers, body: unknown, ms: number): RoutedResponse {
  const usage = (body as { usage?: Usage } | null)?.usage;
  const m = headers.get("x-kvsync-matched-tokens");
  return {
    status,
    pod: headers.get("x-kvsync-pod"),
    matchedTokens: m === null ? null : Number(m),
    promptTokens: usage?.prompt_tokens ?? -1,
    cachedTokens: usage?.prompt_tokens_details?.cached_tokens ?? 0,
    ms,
    body,
  };
}
