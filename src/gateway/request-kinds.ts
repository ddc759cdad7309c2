import { isTokenizerError } from "../tokenize/errors.ts";
import { embeddingChat, scorePairs, scoreSides, scoreText, scoreTexts } from "../tokenize/inputs.ts";
import { formText, parseForm } from "../util/form-data.ts";
import { badRequest } from "./errors.ts";
import type { PromptSpec } from "./prompts.ts";
import {
  batchPrompts,
  isTokenArray,
  type ParsedRequest,
  parseJsonBody,
  type RequestKind,
  validateRequest,
} from "./request.ts";

/**
 * Validation of the endpoints beyond completions and chat, into what routing needs: the
 * model (vLLM lets pooling and tokenize requests leave it out: `model` null, the planner then
 * takes the fleet's only model) and the prompts they put through the engine's prefix cache.
 * Only what routing reads is checked here; the engine validates the rest and answers it.
 */

type Body = Record<string, unknown>;

function base(kind: RequestKind, model: string, stream = false): ParsedRequest {
  return {
    kind,
    model,
    stream,
    includeUsage: false,
    tokenIds: null,
    prompt: null,
    chat: null,
    addSpecialTokens: true,
  };
}

/** `model`: a non-empty string, or "" when absent and `optional` (the planner resolves it). */
export function modelField(body: Body, optional: boolean): string {
  const m = body.model;
  if ((m === undefined || m === null) && optional) return "";
  if (typeof m !== "string" || m.length === 0) {
    throw badRequest("invalid_value", "`model` must be a non-empty string", "model");
  }
  return m;
}

function streamField(body: Body): boolean {
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    throw badRequest("invalid_type", "`stream` must be a boolean", "stream");
  }
  return body.stream === true;
}

/** A single text, token or chat prompt in its own field; anything else in `prompts`. */
function withPrompts(out: ParsedRequest, prompts: PromptSpec[]): ParsedRequest {
  const first = prompts[0];
  if (prompts.length !== 1) out.prompts = prompts;
  else if (first.type === "tokens") out.tokenIds = first.ids;
  else if (first.type === "text") {
    out.prompt = first.text;
    out.addSpecialTokens = first.addSpecialTokens;
  } else if (first.type === "chat") out.chat = first.chat;
  else out.prompts = prompts;
  return out;
}

/** `POST /v1/embeddings`: `input` (string, strings, token ids, lists of them) or chat `messages`. */
function embedding(body: Body): ParsedRequest {
  const out = base("embedding", modelField(body, true));
  const chat = embeddingChat(body);
  if (chat !== null) return withPrompts(out, [{ type: "chat", chat }]);
  const input = body.input;
  const special = body.add_special_tokens !== false;
  if (typeof input === "string")
    return withPrompts(out, [{ type: "text", text: input, addSpecialTokens: special }]);
  if (isTokenArray(input)) return withPrompts(out, [{ type: "tokens", ids: input }]);
  if (
    Array.isArray(input) &&
    input.length > 0 &&
    input.every((x) => typeof x === "string" || isTokenArray(x))
  ) {
    return withPrompts(out, batchPrompts(input as Array<string | number[]>, special));
  }
  throw badRequest(
    "invalid_value",
    "`input` must be a string, an array of strings, an array of token ids or an array of those (or give `messages`)",
    "input",
  );
}

/** `POST /v1/responses`: the input is rendered as a chat when tokenized (tokenize/inputs.ts). */
function responses(body: Body): ParsedRequest {
  const out = base("responses", modelField(body, false), streamField(body));
  const input = body.input;
  if (typeof input !== "string" && !(Array.isArray(input) && input.length > 0)) {
    throw badRequest(
      "invalid_value",
      "`input` must be a string or a non-empty array of input items",
      "input",
    );
  }
  // a continued conversation lives on the pod that stored it: its prompt is not known here
  if (typeof body.previous_response_id === "string") {
    out.routeByPrefix = false;
    out.previousResponseId = body.previous_response_id;
  }
  out.prompts = [{ type: "responses", body }];
  return out;
}

/** Score-pair errors (shape) are the client's: 400 with the renderer's message. */
function pairs(f: () => Array<[string, string]>, param: string): PromptSpec[] {
  try {
    return f().map(([query, doc]) => ({ type: "pair", query, doc }));
  } catch (err) {
    if (isTokenizerError(err)) throw badRequest("invalid_value", err.message, param);
    throw err;
  }
}

/** `POST /score`: one query (or N) against N documents, each pair a prompt. */
function score(body: Body): ParsedRequest {
  const out = base("score", modelField(body, true));
  const prompts = pairs(() => {
    const { a, b } = scoreSides(body);
    return scorePairs(scoreTexts(a, "queries"), scoreTexts(b, "documents"));
  }, "queries");
  return withPrompts(out, prompts);
}

/** `POST /rerank`: `query` against each of `documents`. */
function rerank(body: Body): ParsedRequest {
  const out = base("rerank", modelField(body, true));
  const prompts = pairs(() => {
    if (!Array.isArray(body.documents))
      throw badRequest("invalid_value", "`documents` must be a list", "documents");
    const q = scoreText(body.query, "query");
    return scoreTexts(body.documents, "documents").map((d): [string, string] => [q, d]);
  }, "documents");
  return withPrompts(out, prompts);
}

/** Requests that touch no prefix cache: routed by load. */
function loadOnly(kind: RequestKind, body: Body): ParsedRequest {
  const out = base(kind, modelField(body, true));
  out.routeByPrefix = false;
  return out;
}

/** The parser of each kind beyond chat and completions (JSON bodies; audio is a form). */
export const PARSERS: Partial<Record<RequestKind, (body: Body) => ParsedRequest>> = {
  embedding,
  responses,
  score,
  rerank,
  tokenize: (b) => loadOnly("tokenize", b),
  detokenize: (b) => loadOnly("detokenize", b),
};

/** The OpenAI API paths the gateway forwards (vLLM's surface), each with its request kind. */
export const API_ROUTES: ReadonlyArray<readonly [string, RequestKind]> = [
  ["/v1/chat/completions", "chat"],
  ["/v1/completions", "completion"],
  ["/v1/responses", "responses"],
  ["/v1/embeddings", "embedding"],
  ["/score", "score"],
  ["/v1/score", "score"],
  ["/rerank", "rerank"],
  ["/v1/rerank", "rerank"],
  ["/v2/rerank", "rerank"],
  ["/tokenize", "tokenize"],
  ["/detokenize", "detokenize"],
  ["/v1/audio/transcriptions", "audio"],
  ["/v1/audio/translations", "audio"],
];

/**
 * The explain API's body for `endpoint` (an API path, as in API_ROUTES): parsed exactly as that
 * endpoint parses it, so the dry run takes the real route's decision. Audio's form carries only
 * `model` for routing: explain takes it as JSON.
 */
export function parseForEndpoint(endpoint: string, body: Body): ParsedRequest {
  const route = API_ROUTES.find(([path]) => path === endpoint);
  if (route === undefined) {
    throw badRequest(
      "invalid_value",
      `\`endpoint\` must be one of the gateway's API paths (${API_ROUTES.map(([p]) => p).join(", ")}): ${endpoint}`,
      "endpoint",
    );
  }
  const kind = route[1];
  if (kind === "audio") return loadOnly("audio", body);
  const parser = PARSERS[kind];
  return parser === undefined ? validateRequest(kind, body) : parser(body);
}

/** A request body (read whole) → its parsed form; 400 for what routing cannot read. */
export async function parseRequest(
  kind: RequestKind,
  buf: Buffer,
  contentType: string,
): Promise<{
  body: Record<string, unknown>;
  parsed: ParsedRequest;
}> {
  if (kind === "audio") {
    if (!contentType.startsWith("multipart/form-data")) {
      throw badRequest("invalid_value", "the audio endpoints take multipart/form-data");
    }
    let form: FormData;
    try {
      form = await parseForm(buf, contentType);
    } catch (err) {
      throw badRequest("invalid_value", `bad multipart body: ${(err as Error).message}`);
    }
    const model = formText(form, "model");
    const body: Body = model === null ? {} : { model };
    return { body, parsed: loadOnly("audio", body) };
  }
  const body = parseJsonBody(buf);
  const parser = PARSERS[kind];
  return { body, parsed: parser === undefined ? validateRequest(kind, body) : parser(body) };
}
