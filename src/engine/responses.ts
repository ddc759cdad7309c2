import type { IncomingMessage, ServerResponse } from "node:http";
import { responsesChat } from "../tokenize/inputs.ts";
import { sendJson } from "../util/http-json.ts";
import { generate, watchClose } from "./completions.ts";
import type { MockEngine } from "./engine.ts";
import {
  admitPrompts,
  HttpError,
  type Json,
  optBool,
  optInt,
  readModelRequest,
  tokenizing,
} from "./http-request.ts";
import { responseStore, storeResponse } from "./response-store.ts";

/**
 * `POST /v1/responses` as vLLM answers it: the input rendered as a chat (tokenize/inputs.ts),
 * one generation, and either the whole response object or its SSE events (`event: <type>` and
 * `data: {type, sequence_number, ...}`: created, in_progress, output_item.added,
 * content_part.added, one output_text.delta per token, output_text.done, content_part.done,
 * output_item.done, completed). With `store` (the default) the response is kept
 * (response-store.ts): `previous_response_id` continues it (its input and answer come first),
 * `background: true` answers `queued` at once and generates on, and GET / cancel find it; an id
 * this server does not hold answers 404, as vLLM's store does.
 */

/** The request's `input` as input items (a string is one user message). */
function inputItems(input: unknown): Json[] {
  if (typeof input === "string") return [{ role: "user", content: input }];
  if (Array.isArray(input)) return input as Json[];
  return [];
}
export async function responses(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const tok = engine.tokenizer;
  const { body, lora, model } = await readModelRequest(engine, req);
  const previous = body.previous_response_id;
  let items = inputItems(body.input);
  if (typeof previous === "string") {
    const prev = responseStore(engine).get(previous);
    if (prev === undefined)
      throw new HttpError(404, `Response with id '${previous}' not found.`, "previous_response_id");
    items = [...prev.items, ...items];
  }
  const maxTokens = optInt(body, "max_output_tokens", 1);
  const stream = optBool(body, "stream") ?? false;
  const store = optBool(body, "store") ?? true;
  const background = optBool(body, "background") ?? false;
  if (background && !store)
    throw new HttpError(400, "background can only be used when `store` is true", "background");
  if (background && stream)
    throw new HttpError(400, "background and stream cannot be combined here", "stream");
  const prompt = await tokenizing(async () => tok.encodeChat(responsesChat({ ...body, input: items })));
  const rank = admitPrompts(engine, req, [prompt], maxTokens);
  const id = engine.nextId("resp");
  const msgId = engine.nextId("msg");
  const createdAt = Math.floor(Date.now() / 1000);
  const sig = watchClose(res);
  const out: number[] = [];
  const eos = new Set(tok.eosTokenIds);
  const text = async (ids: number[]) => tok.decode(ids, true);

  const envelope = (status: string, output: Json[], usage: Json | null, incomplete: Json | null): Json => ({
    id,
    created_at: createdAt,
    incomplete_details: incomplete,
    instructions: body.instructions ?? null,
    metadata: body.metadata ?? null,
    model,
    object: "response",
    output,
    parallel_tool_calls: body.parallel_tool_calls ?? true,
    temperature: body.temperature ?? 1.0,
    tool_choice: body.tool_choice ?? "auto",
    tools: body.tools ?? [],
    top_p: body.top_p ?? 1.0,
    background,
    max_output_tokens: maxTokens,
    previous_response_id: typeof previous === "string" ? previous : null,
    reasoning: null,
    service_tier: "auto",
    status,
    text: { format: { type: "text" } },
    truncation: "disabled",
    usage,
    user: body.user ?? null,
    error: null,
  });
  const part = (t: string) => ({ type: "output_text", text: t, annotations: [], logprobs: null });
  const item = (status: string, content: Json[]) => ({
    id: msgId,
    type: "message",
    role: "assistant",
    status,
    content,
  });
  const finish = (g: ReturnType<typeof generate>, reason: string, t: string) => {
    const length = reason === "length";
    return envelope(
      length ? "incomplete" : "completed",
      [item("completed", [part(t)])],
      {
        input_tokens: g.req.promptLen,
        input_tokens_details: { cached_tokens: g.req.cachedTokens ?? 0 },
        output_tokens: g.req.generated,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: g.req.promptLen + g.req.generated,
      },
      length ? { reason: "max_output_tokens" } : null,
    );
  };

  // what a follow-up (previous_response_id) continues from: this input and the answer
  const keep = (response: Json, answer: string, cancel: (() => void) | null) => {
    if (store)
      storeResponse(engine, id, {
        response,
        items: [...items, { role: "assistant", content: answer }],
        cancel,
      });
  };
  if (background) {
    // answered at once; the generation goes on without the client and GET shows where it is
    const own: typeof sig = { aborted: false, onAborts: [] };
    const g = generate(engine, { rank, prompt, maxTokens, ...lora }, (tid) => out.push(tid), own);
    const cancel = () => {
      own.aborted = true;
      for (const f of own.onAborts) f();
    };
    keep(envelope("in_progress", [], null, null), "", cancel);
    sendJson(res, 200, envelope("queued", [], null, null));
    g.done
      .then(async (reason) => {
        const entry = responseStore(engine).get(id);
        if (entry === undefined || entry.response.status === "cancelled") return;
        const t = await text(out);
        keep(finish(g, reason, t), t, null);
      })
      .catch((err: unknown) => {
        // nobody waits for a background response: its failure shows in the store
        const entry = responseStore(engine).get(id);
        if (entry !== undefined && entry.response.status !== "cancelled")
          entry.response = {
            ...entry.response,
            status: "failed",
            error: { code: "server_error", message: String(err) },
          };
        engine.log.warn(
          { event: "responses.background_failed", id, err: String(err) },
          "background response failed",
        );
      });
    return;
  }
  if (!stream) {
    const g = generate(engine, { rank, prompt, maxTokens, ...lora }, (tid) => out.push(tid), sig);
    const reason = await g.done;
    if (sig.aborted) return;
    const t = await text(out);
    const final = finish(g, reason, t);
    keep(final, t, null);
    sendJson(res, 200, final);
    return;
  }

  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    connection: "keep-alive",
  });
  res.flushHeaders();
  let seq = 0;
  const emit = (type: string, data: Json) => {
    if (!sig.aborted)
      res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`);
  };
  const at = { item_id: msgId, output_index: 0, content_index: 0 };
  emit("response.created", { response: envelope("in_progress", [], null, null) });
  emit("response.in_progress", { response: envelope("in_progress", [], null, null) });
  emit("response.output_item.added", { output_index: 0, item: item("in_progress", []) });
  emit("response.content_part.added", { ...at, part: part("") });
  // tokens are decoded in order; decode may be async, so chain the writes
  let chain: Promise<void> = Promise.resolve();
  let full = "";
  const g = generate(
    engine,
    { rank, prompt, maxTokens, ...lora },
    (tid) => {
      out.push(tid);
      chain = chain.then(async () => {
        if (sig.aborted || eos.has(tid)) return;
        const delta = await text([tid]);
        full += delta;
        emit("response.output_text.delta", { ...at, delta, logprobs: [] });
      });
    },
    sig,
  );
  const reason = await g.done;
  await chain;
  if (sig.aborted) return;
  emit("response.output_text.done", { ...at, text: full, logprobs: [] });
  emit("response.content_part.done", { ...at, part: part(full) });
  emit("response.output_item.done", { output_index: 0, item: item("completed", [part(full)]) });
  const final = finish(g, reason, full);
  keep(final, full, null);
  emit(final.status === "completed" ? "response.completed" : "response.incomplete", { response: final });
  res.end();
}
