import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { fastRendererFor, templateDigest } from "../../../src/tokenize/fast-templates.ts";
import { ChatTemplate, defaultTokenizerDir, TokenizerError } from "../../../src/tokenize/index.ts";
import type { ChatRequestLike } from "../../../src/tokenize/types.ts";

const QWEN3 = (
  JSON.parse(readFileSync(join(defaultTokenizerDir(), "tokenizer_config.json"), "utf8")) as {
    chat_template: string;
  }
).chat_template;
const SPECIAL = { bos_token: null, eos_token: "<|im_end|>", pad_token: "<|endoftext|>" };

const fast = new ChatTemplate({ template: QWEN3, specialTokens: SPECIAL });
const interpreted = new ChatTemplate({ template: QWEN3, specialTokens: SPECIAL, fastPath: false });

/** The same request through both; errors must match too (same class and message). */
function both(req: ChatRequestLike): { fast: string | Error; interpreted: string | Error } {
  const run = (t: ChatTemplate) => {
    try {
      return t.render(structuredClone(req));
    } catch (e) {
      return e as Error;
    }
  };
  return { fast: run(fast), interpreted: run(interpreted) };
}

// text pieces that hit every branch of the template: think tags, tool-response wrappers,
// whitespace next to the newlines strip('\n') removes (newlines, spaces, tabs, NBSP), plain words
const piece = fc.constantFrom(
  "<think>",
  "</think>",
  "<tool_response>",
  "</tool_response>",
  "\n",
  "\n\n",
  " ",
  "\t",
  "\u00a0",
  "hello",
  "Answer: 42",
  "<|im_end|>",
  "ü",
  "",
);
const text = fc.array(piece, { maxLength: 8 }).map((a) => a.join(""));
const message = fc.record(
  {
    role: fc.constantFrom("system", "user", "assistant", "tool", "developer", "observer"),
    content: fc.oneof(
      text,
      fc.constant(null),
      fc.array(text, { maxLength: 3 }).map((a) => a.map((t) => ({ type: "text", text: t }))),
    ),
    reasoning_content: text,
    tool_call_id: fc.constant("call_1"),
  },
  { requiredKeys: ["role", "content"] },
);
const request = fc.record(
  {
    messages: fc.array(message, { maxLength: 7 }),
    add_generation_prompt: fc.oneof(fc.boolean(), fc.constant(undefined)),
    continue_final_message: fc.boolean(),
    chat_template_kwargs: fc.oneof(
      fc.constant(undefined),
      fc.record({ enable_thinking: fc.oneof(fc.boolean(), fc.constant(null), fc.constant(0)) }),
      fc.constant({ enable_thinking: false, custom_flag: 1 }),
    ),
  },
  { requiredKeys: ["messages"] },
);

describe("direct chat-template renderers (fast-templates.ts)", () => {
  test("the Qwen3 template is recognised by its exact source, a changed source is not", () => {
    assert.notEqual(fastRendererFor(QWEN3), null);
    assert.equal(fastRendererFor(`${QWEN3} `), null);
    assert.equal(templateDigest(QWEN3).length, 64);
  });

  test("property: Qwen3's direct render equals the interpreted render (or its error) over generated chats", () => {
    const before = fast.fastRenders;
    fc.assert(
      fc.property(request, (req) => {
        const r = both(req as ChatRequestLike);
        if (r.interpreted instanceof Error) {
          assert.ok(r.fast instanceof Error, `interpreter failed (${r.interpreted.message}), direct did not`);
          assert.equal(r.fast.constructor, r.interpreted.constructor);
          assert.equal(r.fast.message, r.interpreted.message);
        } else {
          assert.equal(r.fast, r.interpreted);
        }
      }),
      { seed: 20, numRuns: 3000 },
    );
    // most generated chats are in the direct renderer's shapes: the property covers it, not only the fallback
    assert.ok(fast.fastRenders - before > 1000, `direct renders: ${fast.fastRenders - before}`);
  });

  test("tools, tool calls and unknown kwargs fall back to the interpreter with the same output", () => {
    const reqs: ChatRequestLike[] = [
      {
        messages: [{ role: "user", content: "weather?" }],
        tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
      },
      {
        messages: [
          { role: "user", content: "weather?" },
          {
            role: "assistant",
            content: "",
            tool_calls: [
              {
                id: "c1",
                type: "function",
                function: { name: "get_weather", arguments: '{"city": "Oslo"}' },
              },
            ],
          },
          { role: "tool", content: "sunny", tool_call_id: "c1" },
        ],
      },
      { messages: [{ role: "user", content: "hi" }], chat_template_kwargs: { tools: [{ x: 1 }] } },
      { messages: [], add_generation_prompt: true },
    ];
    for (const req of reqs) {
      const before = fast.interpretedRenders;
      const r = both(req);
      assert.equal(fast.interpretedRenders, before + 1);
      if (r.interpreted instanceof Error) assert.equal((r.fast as Error).message, r.interpreted.message);
      else assert.equal(r.fast, r.interpreted);
    }
  });

  test("a bad request is rejected the same way on the direct path", () => {
    const r = both({ messages: [{ role: "user", content: "x" }], chat_template_kwargs: [] as never });
    assert.ok(r.fast instanceof TokenizerError);
    assert.equal(r.fast.message, (r.interpreted as Error).message);
  });
});
