/**
 * Chat request → template variables, following what vLLM's OpenAI server does for a text-only
 * model whose template takes string content ("string" content format):
 *  - `content: null` → "", a string stays, a list of parts → text parts joined with "\n";
 *  - system text starting with Claude Code's `x-anthropic-billing-header` loses that first line;
 *  - assistant `tool_calls` kept (an empty list dropped), each `function.arguments` JSON string
 *    parsed to an object (templates render it with `tojson`), empty/missing → {};
 *  - `tool_call_id` kept for tool messages, `name` kept when it is a string, `reasoning`
 *    (or the older `reasoning_content`) passed as both `reasoning` and `reasoning_content`;
 *  - tools serialised like vLLM's pydantic `model_dump()`: `{type, function: {name, description,
 *    parameters, ...extra}, ...extra}` with missing optional fields as null;
 *  - `add_generation_prompt` defaults to true unless `continue_final_message`;
 *  - `continue_final_message` trims the render after the final message's content like
 *    transformers' `apply_chat_template`.
 */
import { Template } from "@huggingface/jinja";
import { TokenizerError } from "./errors.ts";
import { type FastRender, fastRendererFor } from "./fast-templates.ts";
import { pythonStrip, STRIP_FN, usePythonStrip } from "./jinja-python-strip.ts";
import { pyLstrip, pyStrip } from "./py-str.ts";
import type { ChatMessage, ChatRequestLike } from "./types.ts";

export interface ConversationMessage {
  role: string;
  content: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
  name?: string;
  reasoning?: string;
  reasoning_content?: string;
  tools?: unknown;
}

const TEXT_PART_TYPES = new Set(["text", "input_text"]);

function partText(part: unknown, msgIndex: number): string {
  if (typeof part === "string") return part;
  if (part === null || typeof part !== "object") {
    throw new TokenizerError(
      "bad_request",
      `messages[${msgIndex}].content: a content part must be an object`,
    );
  }
  const p = part as { type?: unknown; text?: unknown; refusal?: unknown };
  if (typeof p.type === "string" && TEXT_PART_TYPES.has(p.type)) {
    if (typeof p.text !== "string") {
      throw new TokenizerError(
        "bad_request",
        `messages[${msgIndex}].content: "${p.type}" part needs a string "text"`,
      );
    }
    return p.text;
  }
  if (p.type === "refusal" && typeof p.refusal === "string") return p.refusal;
  throw new TokenizerError(
    "bad_request",
    `messages[${msgIndex}].content: unsupported content part type ${JSON.stringify(p.type)} (text-only model)`,
  );
}

const BILLING_HEADER = "x-anthropic-billing-header";

function contentToString(
  content: ChatMessage["content"] | undefined,
  msgIndex: number,
  role: string,
): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string" && role !== "system") return content;
  const parts: unknown = typeof content === "string" ? [content] : content;
  if (!Array.isArray(parts)) {
    throw new TokenizerError(
      "bad_request",
      `messages[${msgIndex}].content must be a string, an array or null`,
    );
  }
  const texts: string[] = [];
  for (const part of parts) {
    let text = partText(part, msgIndex);
    // vLLM drops the per-request Claude Code attribution line from system text (it would defeat
    // prefix caching): the first line of a text starting with it goes, an empty remainder is dropped
    const plainText = typeof part === "string" || (part as { type?: unknown }).type === "text";
    if (role === "system" && plainText && text.startsWith(BILLING_HEADER)) {
      const nl = text.indexOf("\n");
      text = nl === -1 ? "" : text.slice(nl + 1);
      if (text === "") continue;
    }
    texts.push(text);
  }
  return texts.join("\n");
}

function normalizeToolCall(tc: unknown, msgIndex: number): unknown {
  if (tc === null || typeof tc !== "object") return tc;
  const call = tc as Record<string, unknown>;
  const fn = call.function;
  if (fn === null || typeof fn !== "object") return call;
  const f = fn as Record<string, unknown>;
  let args = f.arguments;
  if (args === undefined || args === null || args === "") {
    args = {};
  } else if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch (e) {
      throw new TokenizerError(
        "bad_request",
        `messages[${msgIndex}].tool_calls: function.arguments is not valid JSON: ${(e as Error).message}`,
      );
    }
  }
  return { ...call, function: { ...f, arguments: args } };
}

/** vLLM's message parsing for the "string" content format. */
export function normalizeMessages(messages: ChatMessage[]): ConversationMessage[] {
  if (!Array.isArray(messages)) throw new TokenizerError("bad_request", "messages must be an array");
  const out: ConversationMessage[] = [];
  messages.forEach((m, i) => {
    if (m === null || typeof m !== "object" || typeof m.role !== "string") {
      throw new TokenizerError("bad_request", `messages[${i}] must be an object with a string "role"`);
    }
    const msg: ConversationMessage = { role: m.role, content: contentToString(m.content, i, m.role) };
    if (m.role === "assistant") {
      if (Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
        msg.tool_calls = m.tool_calls.map((tc) => normalizeToolCall(tc, i));
      }
      const reasoning = typeof m.reasoning === "string" ? m.reasoning : m.reasoning_content;
      if (typeof reasoning === "string") {
        msg.reasoning = reasoning;
        msg.reasoning_content = reasoning;
      }
    } else if (m.role === "tool") {
      if (typeof m.tool_call_id === "string") msg.tool_call_id = m.tool_call_id;
    }
    if (typeof m.name === "string") msg.name = m.name;
    if (m.role === "developer") msg.tools = m.tools ?? null;
    out.push(msg);
  });
  return out;
}

function withDeclaredFirst(
  obj: Record<string, unknown>,
  declared: Array<[string, unknown]>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, dflt] of declared) out[k] = obj[k] === undefined ? dflt : obj[k];
  for (const [k, v] of Object.entries(obj)) if (!(k in out)) out[k] = v;
  return out;
}

/** Tools as vLLM hands them to the template: pydantic `model_dump()` of ChatCompletionToolsParam. */
export function normalizeTools(tools: unknown[] | undefined | null): Record<string, unknown>[] | null {
  if (tools === undefined || tools === null) return null;
  if (!Array.isArray(tools)) throw new TokenizerError("bad_request", "tools must be an array");
  return tools.map((t, i) => {
    if (t === null || typeof t !== "object")
      throw new TokenizerError("bad_request", `tools[${i}] must be an object`);
    const tool = t as Record<string, unknown>;
    const fn = tool.function;
    if (fn === null || typeof fn !== "object" || typeof (fn as { name?: unknown }).name !== "string") {
      throw new TokenizerError("bad_request", `tools[${i}].function.name must be a string`);
    }
    const f = withDeclaredFirst(fn as Record<string, unknown>, [
      ["name", undefined],
      ["description", null],
      ["parameters", null],
    ]);
    return withDeclaredFirst({ ...tool, function: f }, [
      ["type", "function"],
      ["function", undefined],
    ]);
  });
}

/** transformers' `continue_final_message` handling: cut the render right after the last message. */
export function trimAfterFinalMessage(rendered: string, finalContent: string): string {
  const stripped = pyStrip(finalContent);
  const loc = rendered.lastIndexOf(stripped);
  if (loc < 0) {
    throw new TokenizerError(
      "bad_request",
      "continue_final_message is set but the final message does not appear in the rendered chat template",
    );
  }
  const lstripped = pyLstrip(finalContent);
  if (rendered.slice(loc, loc + lstripped.length) === finalContent)
    return rendered.slice(0, loc + lstripped.length);
  return rendered.slice(0, loc + stripped.length);
}

/** Names the jinja runtime defines itself (setting them again throws). */
const RESERVED_GLOBALS = new Set([
  "false",
  "true",
  "none",
  "False",
  "True",
  "None",
  "raise_exception",
  "range",
  "strftime_now",
  "messages",
]);

export interface ChatTemplateOptions {
  template: string;
  /** special tokens map passed to the template (bos_token, eos_token, ...) like transformers */
  specialTokens: Record<string, unknown>;
  /** use a direct renderer when one matches the source (default true; false: always interpret) */
  fastPath?: boolean;
}

/** A compiled chat template. */
export class ChatTemplate {
  private readonly compiled: Template;
  private readonly specialTokens: Record<string, unknown>;
  /** a direct renderer for this exact source (fast-templates.ts), null: always interpreted */
  private readonly fast: FastRender | null;
  /** renders done by the direct renderer / by the interpreter (the bench reports the share) */
  fastRenders = 0;
  interpretedRenders = 0;

  private readonly source: string;

  constructor(opts: ChatTemplateOptions) {
    this.source = opts.template;
    try {
      this.compiled = new Template(opts.template);
      usePythonStrip(this.compiled);
    } catch (e) {
      throw new TokenizerError("config", `chat template does not parse: ${(e as Error).message}`, {
        cause: e,
      });
    }
    this.specialTokens = opts.specialTokens;
    this.fast = opts.fastPath === false ? null : fastRendererFor(opts.template);
  }

  /** The same template, always interpreted (benchmarks and tests compare the two). */
  withoutFastPath(): ChatTemplate {
    return new ChatTemplate({ template: this.source, specialTokens: this.specialTokens, fastPath: false });
  }

  render(req: ChatRequestLike): string {
    if (req === null || typeof req !== "object")
      throw new TokenizerError("bad_request", "chat request must be an object");
    const continueFinal = req.continue_final_message === true;
    const addGen = req.add_generation_prompt ?? !continueFinal;
    if (continueFinal && addGen) {
      throw new TokenizerError(
        "bad_request",
        "cannot set both continue_final_message and add_generation_prompt to true",
      );
    }
    const messages = normalizeMessages(req.messages);
    if (continueFinal && messages.length === 0) {
      throw new TokenizerError("bad_request", "continue_final_message needs at least one message");
    }
    const kwargs = req.chat_template_kwargs ?? {};
    if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs)) {
      throw new TokenizerError("bad_request", "chat_template_kwargs must be an object");
    }
    const tools = normalizeTools(req.tools);
    let rendered =
      this.fast === null ? null : this.fast({ messages, tools, addGenerationPrompt: addGen, kwargs });
    if (rendered !== null) this.fastRenders++;
    else {
      this.interpretedRenders++;
      rendered = this.interpret(messages, tools, addGen, kwargs);
    }
    if (continueFinal) rendered = trimAfterFinalMessage(rendered, messages[messages.length - 1].content);
    return rendered;
  }

  private interpret(
    messages: ConversationMessage[],
    tools: Record<string, unknown>[] | null,
    addGen: unknown,
    kwargs: Record<string, unknown>,
  ): string {
    const ctx: Record<string, unknown> = {
      ...this.specialTokens,
      messages,
      tools,
      documents: null,
      add_generation_prompt: addGen,
    };
    for (const [k, v] of Object.entries(kwargs)) {
      if (RESERVED_GLOBALS.has(k)) continue;
      ctx[k] = v;
    }
    // set last: a kwarg of the same name must not replace it
    ctx[STRIP_FN] = pythonStrip;
    try {
      return this.compiled.render(ctx);
    } catch (e) {
      if (e instanceof TokenizerError) throw e;
      throw new TokenizerError("bad_request", `chat template failed to render: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
}
