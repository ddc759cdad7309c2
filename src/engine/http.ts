import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { isTokenizerError, type TokenizerError } from "../tokenize/errors.ts";
import type { ChatRequestLike } from "../tokenize/types.ts";
import { readBody as readBodyWithin } from "../util/http-body.ts";
import { sendJson } from "../util/http-json.ts";
import type { MockEngine, Rank } from "./engine.ts";
import { EngineRequest, type FinishReason, SchedulerFullError } from "./scheduler.ts";

/**
 * vLLM's OpenAI-compatible HTTP surface, on node:http:
 *   POST /v1/completions, /v1/chat/completions (JSON or SSE), GET /v1/models,
 *   POST /tokenize, /detokenize, GET /health, /version, /metrics, POST /reset_prefix_cache,
 *   GET /debug/kv-cache[?rank=N], POST /admin/events/pause|resume[?rank=N].
 * Errors: `{"error":{"message","type","param","code"}}` as vLLM's ErrorResponse.
 */
export class HttpError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  constructor(status: number, message: string, param: string | null = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.type =
      status === 404
        ? "NotFoundError"
        : status === 413
          ? "RequestEntityTooLarge"
          : status === 405
            ? "MethodNotAllowed"
            : status === 409
              ? "Conflict"
              : status === 503
                ? "ServiceUnavailableError"
                : status >= 500
                  ? "InternalServerError"
                  : "BadRequestError";
  }
}

type Json = Record<string, unknown>;

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return readBodyWithin(req, limit, {
    tooLarge: () => new HttpError(413, `request body exceeds ${limit} bytes`),
    closed: () => new HttpError(499, "client closed the request"),
  });
}

async function readJson(req: IncomingMessage, limit: number): Promise<Json> {
  const buf = await readBody(req, limit);
  let v: unknown;
  try {
    v = JSON.parse(buf.toString("utf8"));
  } catch {
    throw new HttpError(400, "request body is not valid JSON");
  }
  if (v === null || typeof v !== "object" || Array.isArray(v))
    throw new HttpError(400, "request body must be a JSON object");
  return v as Json;
}

// ---- field validation ----

function optInt(body: Json, name: string, min: number): number | null {
  const v = body[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new HttpError(400, `${name} must be an integer >= ${min}`, name);
  }
  return v;
}

function optBool(body: Json, name: string): boolean | null {
  const v = body[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "boolean") throw new HttpError(400, `${name} must be a boolean`, name);
  return v;
}

function isTokenIds(v: unknown): v is number[] {
  return (
    Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x < 2 ** 31)
  );
}

function tokenizerHttpError(err: TokenizerError): HttpError {
  if (err.code === "overloaded") return new HttpError(503, err.message);
  if (err.code === "bad_request") return new HttpError(400, err.message);
  return new HttpError(500, `tokenizer: ${err.message}`);
}

interface AbortHooks {
  aborted: boolean;
  onAborts: Array<() => void>;
}

interface Generation {
  rank: Rank;
  prompt: number[];
  loraId: number | null;
  loraName: string | null;
  maxTokens: number | null;
}

export async function startHttpServer(
  engine: MockEngine,
  host: string,
  port: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const o = engine.o;
  const log = engine.log;
  const tok = engine.tokenizer;

  const modelOf = (body: Json): { loraId: number | null; loraName: string | null } => {
    const m = body.model;
    if (m !== undefined && m !== null && typeof m !== "string")
      throw new HttpError(400, "model must be a string", "model");
    const l = engine.loraOf((m as string | undefined) ?? undefined);
    if (l === undefined) throw new HttpError(404, `The model \`${m}\` does not exist.`, "model");
    return l;
  };

  const maxTokensOf = (body: Json): number | null => {
    const a = optInt(body, "max_tokens", 1);
    const b = optInt(body, "max_completion_tokens", 1);
    return b ?? a;
  };

  const checkLength = (promptLen: number, maxTokens: number | null): void => {
    if (promptLen === 0) throw new HttpError(400, "The prompt cannot be empty.", "prompt");
    const total = promptLen + (maxTokens ?? 0);
    if (promptLen >= o.maxModelLen || total > o.maxModelLen) {
      throw new HttpError(
        400,
        `This model's maximum context length is ${o.maxModelLen} tokens. However, you requested ${
          maxTokens === null ? promptLen : total
        } tokens (${promptLen} in the messages, ${maxTokens ?? 0} in the completion). Please reduce the length of the messages or completion.`,
        "max_tokens",
      );
    }
  };

  /** A request that could not run even alone in the whole cache is refused up front. */
  const checkFits = (promptLen: number, maxTokens: number | null): void => {
    const out = maxTokens ?? Math.min(o.maxOutputTokens, o.maxModelLen - promptLen);
    const need = engine.ranks[0].scheduler.blocksNeeded(promptLen, out); // same cache shape on every rank
    if (need > o.numGpuBlocks) {
      throw new HttpError(
        400,
        `request needs up to ${need} KV blocks (prompt ${promptLen} + ${out} output tokens, block size ${o.blockSize}) but the cache has ${o.numGpuBlocks}`,
      );
    }
  };

  const pickRank = (req: IncomingMessage): Rank => {
    const h = req.headers["x-data-parallel-rank"];
    const r = engine.pickRank(Array.isArray(h) ? h[0] : h);
    if (typeof r === "string") throw new HttpError(400, r);
    return r;
  };

  const chatRequestOf = (body: Json): ChatRequestLike => {
    if (!Array.isArray(body.messages) || body.messages.length === 0) {
      throw new HttpError(400, "messages must be a non-empty array", "messages");
    }
    for (const m of body.messages) {
      if (m === null || typeof m !== "object" || typeof (m as Json).role !== "string") {
        throw new HttpError(400, "each message needs a string role", "messages");
      }
    }
    const kw = body.chat_template_kwargs;
    if (kw !== undefined && kw !== null && (typeof kw !== "object" || Array.isArray(kw))) {
      throw new HttpError(400, "chat_template_kwargs must be an object", "chat_template_kwargs");
    }
    if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools)) {
      throw new HttpError(400, "tools must be an array", "tools");
    }
    return {
      messages: body.messages as ChatRequestLike["messages"],
      tools: (body.tools as unknown[] | null | undefined) ?? undefined,
      add_generation_prompt: optBool(body, "add_generation_prompt") ?? true,
      continue_final_message: optBool(body, "continue_final_message") ?? false,
      chat_template_kwargs: (kw as Record<string, unknown> | null | undefined) ?? undefined,
      add_special_tokens: optBool(body, "add_special_tokens") ?? false,
    };
  };

  const encodeCompletionPrompt = async (body: Json): Promise<number[][]> => {
    const p = body.prompt;
    const special = optBool(body, "add_special_tokens") ?? true;
    if (typeof p === "string") return [await tok.encodePrompt(p, special)];
    if (isTokenIds(p)) return [p];
    if (Array.isArray(p) && p.length > 0) {
      const out: number[][] = [];
      for (const x of p) {
        if (typeof x === "string") out.push(await tok.encodePrompt(x, special));
        else if (isTokenIds(x)) out.push(x);
        else throw new HttpError(400, "prompt must be a string, a list of strings, or token ids", "prompt");
      }
      return out;
    }
    throw new HttpError(400, "prompt must be a string, a list of strings, or token ids", "prompt");
  };

  /** Submit one generation; tokens are reported through `onToken`, resolves with the finish reason. */
  const generate = (
    g: Generation,
    onToken: (id: number, index: number) => void,
    sig: AbortHooks,
  ): { req: EngineRequest; done: Promise<FinishReason> } => {
    const plan = engine.planOutput(g.prompt.length, g.maxTokens);
    let resolve!: (r: FinishReason) => void;
    const done = new Promise<FinishReason>((r) => {
      resolve = r;
    });
    const req = new EngineRequest({
      id: engine.nextId("req"),
      prompt: g.prompt,
      output: plan.output,
      finishReason: plan.finish,
      loraId: g.loraId,
      loraName: g.loraName,
      hooks: {
        onToken,
        onFinish: (reason) => {
          log.debug(
            {
              event: "request.finished",
              id: req.id,
              rank: g.rank.index,
              lora: g.loraName,
              promptTokens: req.promptLen,
              cachedTokens: req.cachedTokens,
              generated: req.generated,
              reason,
            },
            "request finished",
          );
          if (reason !== "abort") {
            engine.metrics.requestSuccess.inc({
              model_name: o.model,
              engine: String(g.rank.index),
              finished_reason: reason,
            });
          }
          resolve(reason);
        },
      },
    });
    try {
      g.rank.scheduler.submit(req);
    } catch (err) {
      if (err instanceof SchedulerFullError) throw new HttpError(503, err.message);
      throw err;
    }
    sig.onAborts.push(() => g.rank.scheduler.abort(req));
    return { req, done };
  };

  const usageOf = (reqs: EngineRequest[]) => {
    let prompt = 0;
    let completion = 0;
    let cached = 0;
    for (const r of reqs) {
      prompt += r.promptLen;
      completion += r.generated;
      cached += r.cachedTokens ?? 0;
    }
    return {
      prompt_tokens: prompt,
      total_tokens: prompt + completion,
      completion_tokens: completion,
      prompt_tokens_details: { cached_tokens: cached },
    };
  };

  const decodeText = (ids: number[]) => tok.decode(ids, true);

  const watchClose = (res: ServerResponse) => {
    const sig: AbortHooks = { aborted: false, onAborts: [] };
    res.on("close", () => {
      if (!res.writableFinished) {
        sig.aborted = true;
        for (const f of sig.onAborts) f();
      }
    });
    return sig;
  };

  const sse = (res: ServerResponse, data: unknown) => {
    res.write(`data: ${JSON.stringify(data)}\n\n`);
  };

  const completion = async (req: IncomingMessage, res: ServerResponse, chat: boolean): Promise<void> => {
    const body = await readJson(req, o.maxBodyBytes);
    const lora = modelOf(body);
    const modelName = (body.model as string | undefined) ?? o.model;
    const maxTokens = maxTokensOf(body);
    const n = optInt(body, "n", 1);
    if (n !== null && n !== 1) throw new HttpError(400, "n > 1 is not supported by the mock engine", "n");
    const stream = optBool(body, "stream") ?? false;
    const so = body.stream_options;
    if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so))) {
      throw new HttpError(400, "stream_options must be an object", "stream_options");
    }
    const includeUsage = stream && (so as Json | undefined)?.include_usage === true;
    let prompts: number[][];
    try {
      prompts = chat ? [await tok.encodeChat(chatRequestOf(body))] : await encodeCompletionPrompt(body);
    } catch (err) {
      if (isTokenizerError(err)) throw tokenizerHttpError(err);
      throw err;
    }
    if (stream && prompts.length > 1)
      throw new HttpError(400, "streaming supports one prompt per request", "prompt");
    for (const p of prompts) {
      checkLength(p.length, maxTokens);
      checkFits(p.length, maxTokens);
    }
    const rank = pickRank(req);
    const id = engine.nextId(chat ? "chatcmpl" : "cmpl");
    const created = Math.floor(Date.now() / 1000);
    const sig = watchClose(res);
    const object = chat ? "chat.completion" : "text_completion";

    if (!stream) {
      const outs: number[][] = prompts.map(() => []);
      const gens: Array<ReturnType<typeof generate>> = [];
      try {
        for (let i = 0; i < prompts.length; i++) {
          gens.push(
            generate({ rank, prompt: prompts[i], maxTokens, ...lora }, (tid) => outs[i].push(tid), sig),
          );
        }
      } catch (err) {
        for (const g of gens) rank.scheduler.abort(g.req);
        throw err;
      }
      const reasons = await Promise.all(gens.map((g) => g.done));
      if (sig.aborted) return;
      const choices = await Promise.all(
        reasons.map(async (reason, i) => {
          const text = await decodeText(outs[i]);
          return chat
            ? {
                index: i,
                message: { role: "assistant", content: text, reasoning_content: null, tool_calls: [] },
                logprobs: null,
                finish_reason: reason,
                stop_reason: null,
              }
            : {
                index: i,
                text,
                logprobs: null,
                finish_reason: reason,
                stop_reason: null,
                prompt_logprobs: null,
              };
        }),
      );
      sendJson(res, 200, {
        id,
        object,
        created,
        model: modelName,
        choices,
        usage: usageOf(gens.map((g) => g.req)),
      });
      return;
    }

    // streaming
    const chunkObject = chat ? "chat.completion.chunk" : "text_completion";
    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    res.flushHeaders();
    const chunk = (choice: Json) => {
      const c: Json = { id, object: chunkObject, created, model: modelName, choices: [choice] };
      if (includeUsage) c.usage = null;
      return c;
    };
    if (chat)
      sse(
        res,
        chunk({ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }),
      );
    // tokens are decoded in order; decode may be async, so chain the writes
    let chain: Promise<void> = Promise.resolve();
    const eos = new Set(tok.eosTokenIds);
    const g = generate(
      { rank, prompt: prompts[0], maxTokens, ...lora },
      (tid) => {
        chain = chain.then(async () => {
          if (sig.aborted) return;
          const text = eos.has(tid) ? "" : await decodeText([tid]);
          if (sig.aborted) return;
          if (chat)
            sse(res, chunk({ index: 0, delta: { content: text }, logprobs: null, finish_reason: null }));
          else sse(res, chunk({ index: 0, text, logprobs: null, finish_reason: null, stop_reason: null }));
        });
      },
      sig,
    );
    const reason = await g.done;
    await chain;
    if (sig.aborted) return;
    if (chat)
      sse(
        res,
        chunk({ index: 0, delta: { content: "" }, logprobs: null, finish_reason: reason, stop_reason: null }),
      );
    else sse(res, chunk({ index: 0, text: "", logprobs: null, finish_reason: reason, stop_reason: null }));
    if (includeUsage)
      sse(res, { id, object: chunkObject, created, model: modelName, choices: [], usage: usageOf([g.req]) });
    res.write("data: [DONE]\n\n");
    res.end();
  };

  const tokenize = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const body = await readJson(req, o.maxBodyBytes);
    modelOf(body);
    let tokens: number[];
    try {
      if (body.messages !== undefined) tokens = await tok.encodeChat(chatRequestOf(body));
      else if (typeof body.prompt === "string") {
        tokens = await tok.encodePrompt(body.prompt, optBool(body, "add_special_tokens") ?? true);
      } else throw new HttpError(400, "give either prompt (a string) or messages", "prompt");
    } catch (err) {
      if (isTokenizerError(err)) throw tokenizerHttpError(err);
      throw err;
    }
    let tokenStrs: string[] | null = null;
    if (optBool(body, "return_token_strs") === true) {
      tokenStrs = [];
      for (const t of tokens) tokenStrs.push(await tok.decode([t], false));
    }
    sendJson(res, 200, { count: tokens.length, max_model_len: o.maxModelLen, tokens, token_strs: tokenStrs });
  };

  const detokenize = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const body = await readJson(req, o.maxBodyBytes);
    modelOf(body);
    if (!isTokenIds(body.tokens)) throw new HttpError(400, "tokens must be a list of token ids", "tokens");
    sendJson(res, 200, {
      prompt: await tok.decode(body.tokens, optBool(body, "skip_special_tokens") ?? false),
    });
  };

  const rankParam = (url: URL, required: boolean): Rank[] => {
    const v = url.searchParams.get("rank");
    if (v === null) {
      if (required && engine.ranks.length > 1) {
        throw new HttpError(
          400,
          `this engine has ${engine.ranks.length} data-parallel ranks: give ?rank=N`,
          "rank",
        );
      }
      return required ? [engine.ranks[0]] : engine.ranks;
    }
    const r = Number(v);
    if (!Number.isInteger(r) || r < 0 || r >= engine.ranks.length) {
      throw new HttpError(400, `rank must be an integer in [0, ${engine.ranks.length - 1}]`, "rank");
    }
    return [engine.ranks[r]];
  };

  const models = () => {
    const created = Math.floor(engine.started / 1000);
    const entry = (id: string, root: string, parent: string | null) => ({
      id,
      object: "model",
      created,
      owned_by: "vllm",
      root,
      parent,
      max_model_len: o.maxModelLen,
      permission: [],
    });
    return {
      object: "list",
      data: [entry(o.model, o.model, null), ...o.loraModules.map((l) => entry(l, l, o.model))],
    };
  };

  type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void> | void;
  const routes: Record<string, Partial<Record<string, Handler>>> = {
    "/v1/completions": { POST: (q, s) => completion(q, s, false) },
    "/v1/chat/completions": { POST: (q, s) => completion(q, s, true) },
    "/v1/models": { GET: (_q, s) => sendJson(s, 200, models()) },
    "/tokenize": { POST: tokenize },
    "/detokenize": { POST: detokenize },
    "/health": {
      GET: (_q, s) => {
        s.writeHead(200, { "content-length": 0 });
        s.end();
      },
    },
    "/version": { GET: (_q, s) => sendJson(s, 200, { version: "0.0.0-kvsync-mock" }) },
    "/metrics": {
      GET: async (_q, s) => {
        const text = await engine.metrics.registry.metrics();
        s.writeHead(200, { "content-type": engine.metrics.registry.contentType });
        s.end(text);
      },
    },
    "/reset_prefix_cache": {
      POST: (_q, s, url) => {
        const ranks = rankParam(url, false);
        const failed = ranks.filter((r) => !r.scheduler.resetPrefixCache()).map((r) => r.index);
        log.info({ event: "engine.reset_prefix_cache", failed }, "reset prefix cache");
        if (failed.length > 0) {
          throw new HttpError(
            409,
            `prefix cache not reset on rank(s) ${failed.join(",")}: blocks are in use by requests`,
          );
        }
        s.writeHead(200, { "content-length": 0 });
        s.end();
      },
    },
    "/debug/kv-cache": {
      GET: (_q, s, url) => {
        const [rank] = rankParam(url, true);
        sendJson(s, 200, {
          ...engine.kvCacheSnapshot(rank),
          rank: rank.index,
          block_size: o.blockSize,
          stats: rank.cache.stats(),
          scheduler: {
            running: rank.scheduler.numRunning,
            waiting: rank.scheduler.numWaiting,
            steps: rank.scheduler.steps,
            preemptions: rank.scheduler.preemptions,
          },
          publisher: rank.publisher?.snapshot() ?? null,
        });
      },
    },
    "/admin/events/pause": {
      POST: (_q, s, url) => {
        for (const r of rankParam(url, false)) r.publisher?.pause();
        sendJson(s, 200, { paused: true });
      },
    },
    "/admin/events/resume": {
      POST: (_q, s, url) => {
        for (const r of rankParam(url, false)) r.publisher?.resume();
        sendJson(s, 200, { paused: false });
      },
    },
  };

  const server = createServer((req, res) => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://localhost");
    } catch {
      url = new URL("http://localhost/");
    }
    const fail = (err: unknown) => {
      const e =
        err instanceof HttpError
          ? err
          : new HttpError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`);
      engine.metrics.httpErrors.inc({ code: String(e.status) });
      if (e.status >= 500) log.error({ event: "http.error", path: url.pathname, err }, "request failed");
      else
        log.debug(
          { event: "http.client_error", path: url.pathname, status: e.status, msg: e.message },
          "bad request",
        );
      // after headers went out (a failing stream) sendJson only ends the response
      sendJson(res, e.status, {
        error: { message: e.message, type: e.type, param: e.param, code: e.status },
      });
    };
    try {
      const route = routes[url.pathname];
      if (route === undefined) throw new HttpError(404, `Not Found: ${url.pathname}`);
      const h = route[req.method ?? "GET"];
      if (h === undefined) throw new HttpError(405, `Method ${req.method} not allowed for ${url.pathname}`);
      const p = h(req, res, url);
      if (p instanceof Promise) p.catch(fail);
    } catch (err) {
      fail(err);
    }
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const shownHost =
    host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
