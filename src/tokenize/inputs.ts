/**
 * How vLLM turns the inputs of its non-chat endpoints into prompts, shared by the mock engine
 * (which computes them) and the gateway (which must compute the same token ids to route by
 * prefix):
 *
 * - `/v1/responses`: `instructions` becomes a system message, a string `input` one user message,
 *   a list of input items messages (vLLM's `construct_input_messages`: message items keep their
 *   role and content, an assistant item its first text part, `function_call_output` a tool
 *   message); then the chat template with the generation prompt.
 * - `/score`, `/rerank`: each (query, document) pair is one prompt: the query's tokens with the
 *   model's special tokens, then the document's without (a tokenizer's `text_pair` encoding for
 *   decoder models, which add no separator).
 * - `/v1/embeddings` with `messages` (or chat messages in `input`): the chat template WITHOUT the
 *   generation prompt (vLLM's pooling default `add_generation_prompt: false`).
 */
import { TokenizerError } from "./errors.ts";
import type { ChatMessage, ChatRequestLike, Tokenizer } from "./types.ts";

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

const bad = (m: string) => new TokenizerError("bad_request", m);

/** An assistant item's text: a string content, or its first part's `text`. */
function assistantText(content: unknown): string | null {
  if (typeof content === "string") return content;
  if (Array.isArray(content) && content.length > 0 && isObject(content[0])) {
    const t = content[0].text;
    return typeof t === "string" ? t : null;
  }
  return null;
}

/** One input item → a chat message, or null when it merged into the previous assistant message. */
function itemMessage(item: unknown, i: number, prev: ChatMessage | undefined): ChatMessage | null {
  if (!isObject(item)) throw bad(`input[${i}] must be an object`);
  const type = item.type ?? "message";
  if (type === "function_call_output") {
    if (typeof item.call_id !== "string") throw bad(`input[${i}].call_id must be a string`);
    return {
      role: "tool",
      content: typeof item.output === "string" ? item.output : "",
      tool_call_id: item.call_id,
    };
  }
  if (type !== "message") throw bad(`input[${i}]: item type ${JSON.stringify(type)} is not supported`);
  if (typeof item.role !== "string") throw bad(`input[${i}].role must be a string`);
  if (item.role === "assistant") {
    const text = assistantText(item.content);
    if (text === null) throw bad(`input[${i}]: an assistant message needs text content`);
    if (prev?.role === "assistant" && (prev.content === null || prev.content === undefined)) {
      prev.content = text;
      return null;
    }
    return { role: "assistant", content: text };
  }
  const content = item.content;
  if (typeof content !== "string" && !Array.isArray(content))
    throw bad(`input[${i}].content must be a string or an array of parts`);
  return { role: item.role, content: content as ChatMessage["content"] };
}

/** A `/v1/responses` body's prompt as a chat request (throws TokenizerError on bad input). */
export function responsesChat(body: Json): ChatRequestLike {
  const messages: ChatMessage[] = [];
  const instructions = body.instructions;
  if (typeof instructions === "string" && instructions !== "")
    messages.push({ role: "system", content: instructions });
  const input = body.input;
  if (typeof input === "string") messages.push({ role: "user", content: input });
  else if (Array.isArray(input) && input.length > 0) {
    input.forEach((item, i) => {
      const m = itemMessage(item, i, messages[messages.length - 1]);
      if (m !== null) messages.push(m);
    });
  } else throw bad("`input` must be a string or a non-empty array of input items");
  const req: ChatRequestLike = { messages, add_generation_prompt: true };
  if (Array.isArray(body.tools) && body.tools.length > 0 && body.tool_choice !== "none") {
    // the Responses API's flat function tools, in the chat form the template expects
    req.tools = body.tools
      .filter((t) => isObject(t) && t.type === "function")
      .map((t) => ({ type: "function", function: t }));
  }
  return req;
}

/** The text of one score input: a string, or a `{type:"text", text}` content part. */
export function scoreText(v: unknown, what: string): string {
  if (typeof v === "string") return v;
  if (isObject(v) && typeof v.text === "string") return v.text;
  throw bad(`${what} must be a string (text-only model)`);
}

/** A score input that may be one item or a list of them. */
export function scoreTexts(v: unknown, what: string): string[] {
  if (Array.isArray(v)) {
    if (v.length === 0) throw bad(`${what} must not be empty`);
    return v.map((x, i) => scoreText(x, `${what}[${i}]`));
  }
  return [scoreText(v, what)];
}

/**
 * The (query, document) pairs of a score request, vLLM's pairing: one query against N
 * documents, or N queries against N documents, pairwise.
 */
export function scorePairs(a: string[], b: string[]): Array<[string, string]> {
  if (a.length === 1) return b.map((d) => [a[0], d]);
  if (a.length !== b.length)
    throw bad(
      `the two score inputs must have the same length (${a.length} vs ${b.length}), or the first one item`,
    );
  return a.map((q, i) => [q, b[i]]);
}

/** A `/score` body's two sides, in any of vLLM's spellings. */
export function scoreSides(body: Json): { a: unknown; b: unknown } {
  for (const [x, y] of [
    ["queries", "documents"],
    ["queries", "items"],
    ["data_1", "data_2"],
    ["text_1", "text_2"],
  ] as const) {
    if (body[x] !== undefined && body[y] !== undefined) return { a: body[x], b: body[y] };
  }
  throw bad("give `queries` and `documents` (or `data_1` and `data_2`, `text_1` and `text_2`)");
}

/** One score pair's token ids: the query with special tokens, then the document without. */
export async function encodePair(tok: Tokenizer, query: string, doc: string): Promise<number[]> {
  const q = await tok.encodePrompt(query, true);
  const d = await tok.encodePrompt(doc, false);
  return q.concat(d);
}

/** Chat messages given as an embedding's `messages`, or as its `input` (one conversation). */
export function embeddingChat(body: Json): ChatRequestLike | null {
  const isMessages = (v: unknown): v is ChatMessage[] =>
    Array.isArray(v) && v.length > 0 && v.every((m) => isObject(m) && typeof m.role === "string");
  const msgs = isMessages(body.messages) ? body.messages : isMessages(body.input) ? body.input : null;
  if (msgs === null) return null;
  const req: ChatRequestLike = {
    messages: msgs,
    add_generation_prompt: body.add_generation_prompt === true,
    continue_final_message: body.continue_final_message === true,
    add_special_tokens: body.add_special_tokens === true,
  };
  if (isObject(body.chat_template_kwargs)) req.chat_template_kwargs = body.chat_template_kwargs;
  return req;
}
