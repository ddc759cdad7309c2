import type { IncomingMessage } from "node:http";
import type { ChatRequestLike } from "../tokenize/types.ts";
import { readBody as readBodyWithin } from "../util/http-body.ts";
import { badRequest, GatewayError, tooLarge } from "./errors.ts";
import type { PromptSpec } from "./prompts.ts";

/** What a request asks of the engine; each has its parser (here, request-kinds.ts). */
export type RequestKind =
  | "chat"
  | "completion"
  | "responses"
  | "embedding"
  | "score"
  | "rerank"
  | "tokenize"
  | "detokenize"
  | "audio";

/** Read the whole body, refusing more than `maxBytes` (413) before buffering it. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return readBodyWithin(req, maxBytes, {
    tooLarge: () => tooLarge(maxBytes),
    closed: () => new GatewayError(499, "client_closed", "client_closed", "client closed the request"),
  });
}

export function parseJsonBody(buf: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(buf.toString("utf8"));
  } catch (e) {
    throw badRequest("invalid_json", `request body is not valid JSON: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw badRequest("invalid_json", "request body must be a JSON object");
  }
  return v as Record<string, unknown>;
}

const isTokenArray = (v: unknown): v is number[] =>
  Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x) && x >= 0);

/** What routing needs from a request body, after validation (400 on bad fields). */
export interface ParsedRequest {
  kind: RequestKind;
  model: string;
  stream: boolean;
  /** client asked for `stream_options.include_usage` */
  includeUsage: boolean;
  /** token ids given directly (completions with a token prompt), else null */
  tokenIds: number[] | null;
  /** prompt text for completions (first one of a batch) */
  prompt: string | null;
  /** chat request for the tokenizer */
  chat: ChatRequestLike | null;
  addSpecialTokens: boolean;
  /**
   * vLLM's `cache_salt` (passed through to the engine): the request only reuses blocks stored
   * under the same salt, so its prefix match starts from the salt (NamespaceRef.salt).
   */
  cacheSalt?: string | null;
  /**
   * every prompt the request puts through the engine's cache, when that is not just the one
   * above (a batch, score pairs, a responses input); the planner routes by the one that saves most
   */
  prompts?: PromptSpec[];
  /** false: the request touches no prefix cache (tokenize, audio): routed by load only */
  routeByPrefix?: boolean;
  /** a responses request continuing a stored response: it goes to the pod that stored it */
  previousResponseId?: string;
}

export function validateRequest(kind: RequestKind, body: Record<string, unknown>): ParsedRequest {
  const model = body.model;
  if (typeof model !== "string" || model.length === 0) {
    throw badRequest("invalid_value", "`model` must be a non-empty string", "model");
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    throw badRequest("invalid_type", "`stream` must be a boolean", "stream");
  }
  const so = body.stream_options;
  if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so))) {
    throw badRequest("invalid_type", "`stream_options` must be an object", "stream_options");
  }
  const salt = body.cache_salt;
  if (salt !== undefined && salt !== null && (typeof salt !== "string" || salt === "")) {
    throw badRequest("invalid_value", "`cache_salt` must be a non-empty string", "cache_salt");
  }
  const stream = body.stream === true;
  const includeUsage = stream && (so as { include_usage?: unknown } | undefined)?.include_usage === true;
  const out: ParsedRequest = {
    kind,
    model,
    stream,
    includeUsage,
    tokenIds: null,
    prompt: null,
    chat: null,
    addSpecialTokens: true,
    cacheSalt: typeof salt === "string" ? salt : null,
  };
  if (kind === "chat") {
    const msgs = body.messages;
    if (!Array.isArray(msgs) || msgs.length === 0) {
      throw badRequest("invalid_value", "`messages` must be a non-empty array", "messages");
    }
    msgs.forEach((m, i) => {
      if (
        m === null ||
        typeof m !== "object" ||
        Array.isArray(m) ||
        typeof (m as { role?: unknown }).role !== "string"
      ) {
        throw badRequest(
          "invalid_value",
          `messages[${i}] must be an object with a string \`role\``,
          `messages[${i}]`,
        );
      }
    });
    if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools)) {
      throw badRequest("invalid_type", "`tools` must be an array", "tools");
    }
    const chat: ChatRequestLike = { messages: msgs as ChatRequestLike["messages"] };
    if (Array.isArray(body.tools)) chat.tools = body.tools;
    if (typeof body.add_generation_prompt === "boolean")
      chat.add_generation_prompt = body.add_generation_prompt;
    if (typeof body.continue_final_message === "boolean")
      chat.continue_final_message = body.continue_final_message;
    if (body.chat_template_kwargs && typeof body.chat_template_kwargs === "object") {
      chat.chat_template_kwargs = body.chat_template_kwargs as Record<string, unknown>;
    }
    if (typeof body.add_special_tokens === "boolean") chat.add_special_tokens = body.add_special_tokens;
    out.chat = chat;
    return out;
  }
  const p = body.prompt;
  if (typeof p === "string") out.prompt = p;
  else if (isTokenArray(p)) out.tokenIds = p;
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === "string" || isTokenArray(x))) {
    // a batch: routed by the prompt that saves the most (planner)
    if (typeof p[0] === "string") out.prompt = p[0];
    else out.tokenIds = p[0] as number[];
    if (p.length > 1)
      out.prompts = batchPrompts(p as Array<string | number[]>, body.add_special_tokens !== false);
  } else {
    throw badRequest(
      "invalid_value",
      "`prompt` must be a string, an array of strings, an array of token ids or an array of those",
      "prompt",
    );
  }
  if (typeof body.add_special_tokens === "boolean") out.addSpecialTokens = body.add_special_tokens;
  return out;
}

/** A batch of completion-style prompts (strings or token id lists) as prompt specs. */
export function batchPrompts(p: Array<string | number[]>, addSpecialTokens: boolean): PromptSpec[] {
  return p.map((x) =>
    typeof x === "string" ? { type: "text", text: x, addSpecialTokens } : { type: "tokens", ids: x },
  );
}

export { isTokenArray };

/** The explain API's body: `{model, lora?, messages | prompt | token_ids}`. */
export function validateExplain(body: Record<string, unknown>): ParsedRequest {
  if (Array.isArray(body.token_ids)) {
    if (!isTokenArray(body.token_ids) && body.token_ids.length > 0) {
      throw badRequest("invalid_value", "`token_ids` must be an array of non-negative integers", "token_ids");
    }
    if (typeof body.model !== "string" || body.model.length === 0) {
      throw badRequest("invalid_value", "`model` must be a non-empty string", "model");
    }
    return {
      kind: "completion",
      model: body.model,
      stream: false,
      includeUsage: false,
      tokenIds: body.token_ids as number[],
      prompt: null,
      chat: null,
      addSpecialTokens: true,
      cacheSalt: typeof body.cache_salt === "string" && body.cache_salt !== "" ? body.cache_salt : null,
    };
  }
  return validateRequest(body.messages !== undefined ? "chat" : "completion", body);
}
