/**
 * Direct renderers for known chat templates, used instead of interpreting the template when the
 * request has a shape they cover. Interpreting is the gateway's largest own cost per request
 * (docs/performance.md): `@huggingface/jinja` wraps every value it touches in a runtime object, and
 * every string method call builds that string's table of builtin functions. A direct renderer does
 * neither.
 *
 * A renderer is picked by the SHA-256 of the template source, so a template that differs by one
 * byte is interpreted. Each renderer reproduces Python jinja2's render (what vLLM produces)
 * exactly, e.g. `strip('\n')` removes newlines only (jinja-python-strip.ts gives the interpreter the
 * same semantics); `test/unit/tokenize/fast-templates.test.ts` checks equality against the
 * interpreter over generated message lists and against jinja2's renders in
 * test/fixtures/chat-templates/. A renderer returns null
 * for a request outside the shapes it covers (tools, tool calls, template kwargs other than
 * `enable_thinking`, non-boolean flags, no messages); the caller then interprets the template.
 */
import { createHash } from "node:crypto";
import { lstripNewlines, rstripNewlines } from "./py-str.ts";

/** The fields of chat.ts's ConversationMessage the renderers read (declared here: no import cycle). */
export interface TemplateMessage {
  role: string;
  content: string;
  tool_calls?: unknown[];
  reasoning_content?: string;
}

export interface FastRenderInput {
  messages: TemplateMessage[];
  /** tools after `normalizeTools` (null when the request has none) */
  tools: unknown[] | null;
  addGenerationPrompt: unknown;
  /** `chat_template_kwargs` as the request gave them */
  kwargs: Record<string, unknown>;
}

/** Renders the template for `input`, or null when the input is outside what it covers. */
export type FastRender = (input: FastRenderInput) => string | null;

const TOOL_RESPONSE_OPEN = "<tool_response>";
const TOOL_RESPONSE_CLOSE = "</tool_response>";

/** Only `enable_thinking` (boolean) among the kwargs: any other key may shadow a template variable. */
function enableThinking(kwargs: Record<string, unknown>): boolean | undefined | null {
  let value: boolean | undefined;
  for (const k in kwargs) {
    if (k !== "enable_thinking") return null;
    const v = kwargs[k];
    if (typeof v !== "boolean") return null;
    value = v;
  }
  return value;
}

/**
 * The Qwen3 family's template (Qwen3-0.6B … 235B share it), without tools: system header, the
 * last-query search over the reversed messages, `<think>` blocks after the last query, tool
 * responses grouped into one user turn, the generation prompt and `enable_thinking=false`'s empty
 * think block.
 */
const renderQwen3: FastRender = ({ messages, tools, addGenerationPrompt, kwargs }) => {
  if (tools !== null && tools.length > 0) return null;
  if (typeof addGenerationPrompt !== "boolean") return null;
  const thinking = enableThinking(kwargs);
  if (thinking === null) return null;
  const n = messages.length;
  if (n === 0) return null;
  for (let i = 0; i < n; i++) if (messages[i].tool_calls !== undefined) return null;
  let out = "";
  if (messages[0].role === "system") out += `<|im_start|>system\n${messages[0].content}<|im_end|>\n`;
  let lastQuery = n - 1;
  for (let i = n - 1; i >= 0; i--) {
    const m = messages[i];
    if (
      m.role === "user" &&
      !(m.content.startsWith(TOOL_RESPONSE_OPEN) && m.content.endsWith(TOOL_RESPONSE_CLOSE))
    ) {
      lastQuery = i;
      break;
    }
  }
  for (let i = 0; i < n; i++) {
    const m = messages[i];
    const last = i === n - 1;
    if (m.role === "user" || (m.role === "system" && i > 0)) {
      out += `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`;
    } else if (m.role === "assistant") {
      let content = m.content;
      let reasoning = "";
      if (m.reasoning_content !== undefined && m.reasoning_content !== null) {
        reasoning = m.reasoning_content;
      } else if (content.includes("</think>")) {
        const after = content.split("</think>");
        content = lstripNewlines(after[after.length - 1]);
        const before = rstripNewlines(after[0]).split("<think>");
        reasoning = lstripNewlines(before[before.length - 1]);
      }
      if (i > lastQuery && (last || reasoning !== "")) {
        const thought = rstripNewlines(lstripNewlines(reasoning));
        out += `<|im_start|>assistant\n<think>\n${thought}\n</think>\n\n${lstripNewlines(content)}`;
      } else {
        out += `<|im_start|>assistant\n${content}`;
      }
      out += "<|im_end|>\n";
    } else if (m.role === "tool") {
      if (i === 0 || messages[i - 1].role !== "tool") out += "<|im_start|>user";
      out += `\n${TOOL_RESPONSE_OPEN}\n${m.content}\n${TOOL_RESPONSE_CLOSE}`;
      if (last || messages[i + 1].role !== "tool") out += "<|im_end|>\n";
    }
  }
  if (addGenerationPrompt) {
    out += "<|im_start|>assistant\n";
    if (thinking === false) out += "<think>\n\n</think>\n\n";
  }
  return out;
};

/** SHA-256 (hex) of a template source → its direct renderer. */
const KNOWN: ReadonlyMap<string, FastRender> = new Map([
  // Qwen3 (tokenizer_config.json's chat_template of Qwen/Qwen3-0.6B and the rest of the family)
  ["87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5", renderQwen3],
]);

export function templateDigest(source: string): string {
  return createHash("sha256").update(source).digest("hex");
}

/** The direct renderer for this exact template source, or null (the template is interpreted). */
export function fastRendererFor(source: string): FastRender | null {
  return KNOWN.get(templateDigest(source)) ?? null;
}
