import { prefix, words } from "../../e2e/harness/workload.ts";

/**
 * The chaos suite's workload: multi-turn chats through the gateway, each conversation opening
 * with one of a few shared system prompts, sent by a bounded number of workers up to a bounded
 * count. Every request is recorded with what the experiment needs to judge it: timing, the pod
 * that served it (or the pod its error names), the status and error shape, the engine's
 * `cached_tokens` and prompt tokens, and the gateway's predicted matched tokens.
 */

export type ErrorShape = "openai" | "other";

export interface RequestRecord {
  id: number;
  conversation: number;
  turn: number;
  /** epoch ms */
  start: number;
  end: number;
  status: number;
  /** x-kvsync-pod, or the pod an error message names */
  pod: string | null;
  errorShape: ErrorShape | null;
  errorCode: string | null;
  errorMessage: string | null;
  promptTokens: number;
  cachedTokens: number;
  /** x-kvsync-matched-tokens */
  matchedTokens: number | null;
  /** the client gave up (its own timeout) or the connection to the gateway failed */
  clientError: string | null;
}

export interface LoadOptions {
  model: string;
  /** requests in flight at once */
  concurrency: number;
  /** hard bound on requests sent between start() and stop() (the loop stops there) */
  maxRequests: number;
  systemPrompts: number;
  /** turns before a conversation starts over (with a fresh seed) */
  turns: number;
  /** the client's own deadline: a request still open then is recorded as a hang */
  clientTimeoutMs: number;
  maxTokens: number;
  seed: number;
}

export const LOAD_DEFAULTS: Omit<LoadOptions, "model"> = {
  concurrency: 4,
  maxRequests: 100_000,
  systemPrompts: 6,
  turns: 6,
  clientTimeoutMs: 30_000,
  maxTokens: 6,
  seed: 1,
};

interface Conversation {
  id: number;
  system: string;
  messages: Array<{ role: string; content: string }>;
  turn: number;
  busy: boolean;
}

const POD_IN_MESSAGE = /\bpod ([\w.-]+\/[\w.-]+)/;

export class ChatLoad {
  readonly records: RequestRecord[] = [];
  private readonly opts: LoadOptions;
  private readonly conversations: Conversation[] = [];
  private running = false;
  private workers: Promise<void>[] = [];
  private nextId = 0;
  private startedAt = 0;
  private nextSeed: number;

  constructor(
    private readonly gatewayUrl: () => string,
    opts: Partial<LoadOptions> & { model: string },
  ) {
    this.opts = { ...LOAD_DEFAULTS, ...opts };
    this.nextSeed = this.opts.seed * 100_000;
    const systems = Array.from({ length: this.opts.systemPrompts }, (_, i) =>
      prefix(`chaos-sys${i}`, 9_000 + this.opts.seed * 100 + i, 110),
    );
    // twice as many conversations as workers: a conversation is never in flight twice
    for (let i = 0; i < this.opts.concurrency * 2; i++) {
      this.conversations.push(this.fresh(i, systems[i % systems.length]));
    }
  }

  private fresh(id: number, system: string): Conversation {
    return {
      id,
      system,
      messages: [
        { role: "system", content: system },
        { role: "user", content: words(this.nextSeed++, 30) },
      ],
      turn: 0,
      busy: false,
    };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.startedAt = this.nextId;
    this.workers = Array.from({ length: this.opts.concurrency }, () => this.worker());
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
    this.workers = [];
  }

  get active(): boolean {
    return this.running;
  }

  private async worker(): Promise<void> {
    while (this.running && this.nextId - this.startedAt < this.opts.maxRequests) {
      const conv = this.conversations.find((c) => !c.busy);
      if (!conv) {
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      conv.busy = true;
      try {
        await this.send(conv);
      } finally {
        conv.busy = false;
      }
    }
  }

  /** One request of a conversation; on success the conversation moves on a turn. */
  async send(conv: Conversation): Promise<RequestRecord> {
    const rec: RequestRecord = {
      id: this.nextId++,
      conversation: conv.id,
      turn: conv.turn,
      start: Date.now(),
      end: 0,
      status: 0,
      pod: null,
      errorShape: null,
      errorCode: null,
      errorMessage: null,
      promptTokens: -1,
      cachedTokens: 0,
      matchedTokens: null,
      clientError: null,
    };
    try {
      const r = await fetch(`${this.gatewayUrl()}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: this.opts.model,
          messages: conv.messages,
          max_tokens: this.opts.maxTokens,
          temperature: 0,
        }),
        signal: AbortSignal.timeout(this.opts.clientTimeoutMs),
      });
      const text = await r.text();
      rec.status = r.status;
      rec.pod = r.headers.get("x-kvsync-pod");
      const m = r.headers.get("x-kvsync-matched-tokens");
      rec.matchedTokens = m === null ? null : Number(m);
      let body: unknown = null;
      try {
        body = JSON.parse(text);
      } catch {
        // judged below as a non-OpenAI error shape
      }
      if (r.status === 200) {
        const b = body as {
          usage?: { prompt_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } | null };
          choices?: Array<{ message?: { content?: string } }>;
        };
        rec.promptTokens = b?.usage?.prompt_tokens ?? -1;
        rec.cachedTokens = b?.usage?.prompt_tokens_details?.cached_tokens ?? 0;
        this.advance(conv, b?.choices?.[0]?.message?.content ?? "");
      } else {
        const err = (body as { error?: { message?: unknown; type?: unknown; code?: unknown } } | null)?.error;
        const openai =
          err !== undefined &&
          err !== null &&
          typeof err.message === "string" &&
          typeof err.type === "string" &&
          "code" in err;
        rec.errorShape = openai ? "openai" : "other";
        rec.errorCode = openai ? String(err.code) : null;
        rec.errorMessage = openai ? String(err.message) : text.slice(0, 200);
        rec.pod ??= rec.errorMessage?.match(POD_IN_MESSAGE)?.[1] ?? null;
      }
    } catch (err) {
      rec.clientError = (err as Error).name === "TimeoutError" ? "client timeout" : String(err);
    }
    rec.end = Date.now();
    this.records.push(rec);
    return rec;
  }

  private advance(conv: Conversation, reply: string): void {
    conv.turn++;
    if (conv.turn >= this.opts.turns) {
      // a worker's conversation stays held until its finally; a probe's stays free
      Object.assign(conv, this.fresh(conv.id, conv.system), { busy: conv.busy });
      return;
    }
    conv.messages.push({ role: "assistant", content: reply || "ok" });
    conv.messages.push({ role: "user", content: words(this.nextSeed++, 25) });
  }

  /** A conversation not in flight (for sequential probes while the workers are stopped). */
  idleConversation(k: number): Conversation {
    const free = this.conversations.filter((c) => !c.busy);
    if (free.length === 0) throw new Error("no idle conversation");
    return free[k % free.length];
  }
}

export interface WindowStats {
  from: number;
  to: number;
  ok: number;
  failed: number;
  /** successful requests per second */
  throughput: number;
  /** engine-reported cached tokens / prompt tokens of the successful requests */
  hitRate: number;
}

/**
 * Requests that ended in [from, to). Records are appended as requests end, so they are sorted by
 * `end`: a binary search finds the window, keeping the recovery loop's repeated windows cheap
 * (a file's load holds tens of thousands of records on a fast machine, and this process shares
 * the cores with the gateway it measures).
 */
export function windowStats(records: RequestRecord[], from: number, to: number): WindowStats {
  let ok = 0;
  let failed = 0;
  let cached = 0;
  let prompt = 0;
  let lo = 0;
  let hi = records.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (records[mid].end < from) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < records.length; i++) {
    const r = records[i];
    if (r.end >= to) break;
    if (r.status === 200) {
      ok++;
      cached += r.cachedTokens;
      prompt += Math.max(0, r.promptTokens);
    } else failed++;
  }
  const secs = Math.max(0.001, (to - from) / 1000);
  return { from, to, ok, failed, throughput: ok / secs, hitRate: prompt > 0 ? cached / prompt : 0 };
}
