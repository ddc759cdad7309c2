import type { IncomingMessage, ServerResponse } from "node:http";
import { sendJson } from "../util/http-json.ts";
import type { MockEngine, Rank } from "./engine.ts";
import {
  admitPrompts,
  cacheSaltOf,
  chatRequestOf,
  encodeCompletionPrompt,
  HttpError,
  type Json,
  maxTokensOf,
  optBool,
  optInt,
  readModelRequest,
  tokenizing,
} from "./http-request.ts";
import { EngineRequest, type FinishReason, SchedulerFullError } from "./scheduler.ts";

/**
 * POST /v1/completions and /v1/chat/completions as vLLM answers them: one JSON body, or SSE
 * chunks (a role chunk first for chat, one chunk per token, a finish chunk, the usage chunk
 * when `stream_options.include_usage`, then `[DONE]`). A client that goes away aborts its
 * requests in the scheduler.
 */

export interface AbortHooks {
  aborted: boolean;
  onAborts: Array<() => void>;
}

interface Generation {
  rank: Rank;
  prompt: number[];
  loraId: number | null;
  loraName: string | null;
  cacheSalt?: string | null;
  maxTokens: number | null;
}

/** Submit one generation; tokens are reported through `onToken`, resolves with the finish reason. */
export function generate(
  engine: MockEngine,
  g: Generation,
  onToken: (id: number, index: number) => void,
  sig: AbortHooks,
): { req: EngineRequest; done: Promise<FinishReason> } {
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
    cacheSalt: g.cacheSalt ?? null,
    hooks: {
      onToken,
      onFinish: (reason) => {
        engine.log.debug(
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
            model_name: engine.o.model,
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
}

function usageOf(reqs: EngineRequest[]) {
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
}

export function watchClose(res: ServerResponse): AbortHooks {
  const sig: AbortHooks = { aborted: false, onAborts: [] };
  res.on("close", () => {
    if (!res.writableFinished) {
      sig.aborted = true;
      for (const f of sig.onAborts) f();
    }
  });
  return sig;
}

function sse(res: ServerResponse, data: unknown): void {
  res.write(`data: ${JSON.stringify(data)}\n\n`);
}

export async function completion(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
  chat: boolean,
): Promise<void> {
  const tok = engine.tokenizer;
  const decodeText = (ids: number[]) => tok.decode(ids, true);
  const { body, lora: adapter, model: modelName } = await readModelRequest(engine, req);
  const lora = { ...adapter, cacheSalt: cacheSaltOf(engine, body) };
  const maxTokens = maxTokensOf(body);
  const n = optInt(body, "n", 1);
  if (n !== null && n !== 1) throw new HttpError(400, "n > 1 is not supported by the mock engine", "n");
  const stream = optBool(body, "stream") ?? false;
  const so = body.stream_options;
  if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so))) {
    throw new HttpError(400, "stream_options must be an object", "stream_options");
  }
  const includeUsage = stream && (so as Json | undefined)?.include_usage === true;
  const prompts = await tokenizing(async () =>
    chat ? [await tok.encodeChat(chatRequestOf(body))] : await encodeCompletionPrompt(tok, body),
  );
  if (stream && prompts.length > 1)
    throw new HttpError(400, "streaming supports one prompt per request", "prompt");
  const rank = admitPrompts(engine, req, prompts, maxTokens);
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
          generate(engine, { rank, prompt: prompts[i], maxTokens, ...lora }, (tid) => outs[i].push(tid), sig),
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
    engine,
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
}
