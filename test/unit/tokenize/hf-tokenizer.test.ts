import assert from "node:assert/strict";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import {
  DEFAULT_MODEL,
  defaultTokenizerDir,
  type HfTokenizer,
  loadTokenizer,
  TokenizerError,
} from "../../../src/tokenize/index.ts";
import { mixedText, type RefMessage, type RefTool, refEncode, refRenderQwen3 } from "./reference.ts";

let tok: HfTokenizer;
before(async () => {
  tok = await loadTokenizer(DEFAULT_MODEL);
});

describe("known Qwen2/Qwen3 ids", () => {
  test("special tokens and common words", async () => {
    assert.deepEqual(await tok.encodePrompt("<|im_start|>"), [151644]);
    assert.deepEqual(await tok.encodePrompt("<|im_end|>"), [151645]);
    assert.deepEqual(await tok.encodePrompt("<|endoftext|>"), [151643]);
    assert.deepEqual(await tok.encodePrompt("<think></think>"), [151667, 151668]);
    assert.deepEqual(await tok.encodePrompt("Hello world"), [9707, 1879]);
    assert.deepEqual(
      await tok.encodePrompt("<|im_start|>user\nHello world<|im_end|>\n"),
      [151644, 872, 198, 9707, 1879, 151645, 198],
    );
  });

  test("pre-tokenization follows the Qwen2 split regex (contractions, digits, whitespace runs)", async () => {
    assert.deepEqual(await tok.encodePrompt("system"), [8948]);
    const pre = (tok.core.hf.pre_tokenizer as unknown as { pre_tokenize_text(s: string): string[] })
      .pre_tokenize_text;
    const preTok = (s: string) => pre.call(tok.core.hf.pre_tokenizer, s);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d) is case-insensitive; \p{N} splits digits one by one;
    // \s+(?!\S) leaves the last space of a run to the next word; NBSP is whitespace (byte-level "Âł")
    assert.deepEqual(preTok("DON'T we'LL I'm"), ["DON", "'T", "Ġwe", "'LL", "ĠI", "'m"]);
    assert.deepEqual(preTok("12345"), ["1", "2", "3", "4", "5"]);
    assert.deepEqual(preTok("Hello   world"), ["Hello", "ĠĠ", "Ġworld"]);
    assert.deepEqual(preTok("x\u00a0\u00a0y"), ["x", "Âł", "Âły"]);
    assert.deepEqual(preTok("a\n\n\nb"), ["a", "ĊĊĊ", "b"]);
    // Oniguruma's \s is Unicode White_Space: NEL (U+0085) and U+2028 are spaces, BOM, U+180E,
    // ZWSP and \x1c are not (JS's own \s differs on NEL and BOM)
    assert.deepEqual(preTok("x\u0085\u0085y"), ["x", "Âħ", "Âħy"]);
    assert.deepEqual(preTok("a\u2028\u2028b"), ["a", "âĢ¨", "âĢ¨b"]);
    assert.deepEqual(preTok("a\ufeff\ufeffb"), ["a", "ï»¿ï»¿", "b"]);
    assert.deepEqual(preTok("x\u180e\u180ey"), ["x", "áłİáłİ", "y"]);
    assert.deepEqual(preTok("a\u200b\u200bb"), ["a", "âĢĭâĢĭ", "b"]);
    assert.deepEqual(preTok("x\u001c\u001cy"), ["x", "ĜĜ", "y"]);
  });

  test("Qwen3 adds no BOS for completions and eos is <|im_end|>", async () => {
    assert.deepEqual(await tok.encodePrompt("Hello", true), await tok.encodePrompt("Hello", false));
    assert.deepEqual(tok.eosTokenIds, [151645]);
    assert.equal(tok.core.bosTokenId, null);
    assert.equal(tok.core.plan.boundary, "<|im_start|>");
  });

  test("decode round-trips and can skip special tokens", async () => {
    const text = "<|im_start|>user\n你好 🎉 مرحبا<|im_end|>";
    const ids = await tok.encodePrompt(text);
    assert.equal(await tok.decode(ids), text);
    assert.equal(await tok.decode(ids, true), "user\n你好 🎉 مرحبا");
  });
});

describe("completion prompts equal the reference tokenizer", () => {
  const cases: Array<[string, string]> = [
    ["empty", ""],
    ["ascii", "The quick brown fox jumps over the lazy dog. It's 2024; we'll see."],
    ["whitespace", "  leading\n\n\ttabs   and  trailing   \r\n  "],
    ["numbers", "1234567890 3.14159 -42 1e10 0xdeadbeef"],
    ["code", "function f(a, b) {\n  return a + b; // sum\n}\n\nconst x = f(1, 2);\n"],
    ["cjk", "東京は日本の首都です。你好，世界！한국어 텍스트"],
    ["emoji", "🎉👩‍👩‍👧‍👦🇯🇵 ✨ 😀😃 ❤️"],
    ["combining marks", "e\u0301 A\u030a n\u0303o cafe\u0301 Zalgo: Z\u0351\u0300a\u0352l\u0353g\u0354o"],
    ["rtl", "مرحبا بالعالم שלום עולם ‏mixed‎ RTL"],
    ["special tokens inline", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>"],
    ["partial special tokens", "<|im_st art|> <|im_end <tool_call> </think>x<|endoftext|>"],
  ];
  for (const [name, text] of cases) {
    test(name, async () => {
      assert.deepEqual(await tok.encodePrompt(text), refEncode(text, true));
    });
  }

  test("random mixed-script texts", async () => {
    for (let seed = 1; seed <= 40; seed++) {
      const text = mixedText(seed, 60);
      assert.deepEqual(
        await tok.encodePrompt(text),
        refEncode(text, true),
        `seed ${seed}: ${JSON.stringify(text)}`,
      );
    }
  });

  test("long prompt (8k+ tokens)", async () => {
    const text = mixedText(424242, 9000);
    const ids = await tok.encodePrompt(text);
    assert.ok(ids.length > 8192, `only ${ids.length} tokens`);
    assert.deepEqual(ids, refEncode(text, true));
  });
});

const TOOLS: RefTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Weather for a city — «ünïcödé» 天气",
      parameters: {
        type: "object",
        properties: { city: { type: "string" }, days: { type: "integer", minimum: 1 } },
        required: ["city"],
      },
    },
  },
  { function: { name: "now" } },
];

const CHATS: Array<{ name: string; messages: RefMessage[]; tools?: RefTool[]; enableThinking?: boolean }> = [
  { name: "single user", messages: [{ role: "user", content: "Hello world" }] },
  {
    name: "system + user, unicode",
    messages: [
      { role: "system", content: "You are helpful. 你是一个助手。" },
      { role: "user", content: "مرحبا 🎉 e\u0301 שלום" },
    ],
  },
  {
    name: "multi-part content",
    messages: [
      {
        role: "system",
        content: [
          { type: "text", text: "sys part 1" },
          { type: "text", text: "sys part 2" },
        ],
      },
      {
        role: "user",
        content: [
          { type: "text", text: "first" },
          { type: "text", text: "second\n" },
          { type: "text", text: "third" },
        ],
      },
    ],
  },
  {
    name: "multi-turn with reasoning in history",
    messages: [
      { role: "user", content: "What is 2+2?" },
      { role: "assistant", content: "<think>\nadd them\n</think>\n\n4" },
      { role: "user", content: "And 3+3?" },
      { role: "assistant", content: "6", reasoning: "easy" },
      { role: "user", content: "thanks" },
    ],
  },
  {
    name: "tools and tool calls",
    tools: TOOLS,
    messages: [
      { role: "system", content: "Use tools." },
      { role: "user", content: "Weather in Paris and Tokyo?" },
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "a", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } },
          {
            id: "b",
            type: "function",
            function: { name: "get_weather", arguments: '{"city":"東京","days":2}' },
          },
        ],
      },
      { role: "tool", tool_call_id: "a", content: "sunny 21°C" },
      { role: "tool", tool_call_id: "b", content: [{ type: "text", text: "rain" }] },
    ],
  },
  {
    name: "enable_thinking false",
    enableThinking: false,
    messages: [{ role: "user", content: "quick answer please" }],
  },
];

describe("chat requests equal the hand-written Qwen3 template + reference tokenizer", () => {
  for (const c of CHATS) {
    test(c.name, async () => {
      const req = {
        messages: c.messages as never,
        tools: c.tools,
        chat_template_kwargs:
          c.enableThinking === undefined ? undefined : { enable_thinking: c.enableThinking },
      };
      const expectedText = refRenderQwen3(c.messages, { tools: c.tools, enableThinking: c.enableThinking });
      assert.equal(await tok.renderChat(req), expectedText);
      assert.deepEqual(await tok.encodeChat(req), refEncode(expectedText, false));
    });
  }

  test("rendered text of a simple chat (hand-verified)", async () => {
    const text = await tok.renderChat({
      messages: [
        { role: "system", content: "S" },
        { role: "user", content: "U" },
      ],
    });
    assert.equal(
      text,
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n",
    );
    const ids = await tok.encodeChat({ messages: [{ role: "user", content: "Hello world" }] });
    assert.deepEqual(ids, [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]);
  });

  test("system text loses a leading Claude Code billing-header line (as vLLM does)", async () => {
    const hdr = "x-anthropic-billing-header: cc_version=1; cch=abc123";
    const render = (messages: unknown[]) =>
      tok.renderChat({ messages: messages as never, add_generation_prompt: false });
    assert.equal(
      await render([{ role: "system", content: `${hdr}\nYou are Claude Code.` }]),
      "<|im_start|>system\nYou are Claude Code.<|im_end|>\n",
    );
    assert.equal(
      await render([
        {
          role: "system",
          content: [
            { type: "text", text: hdr },
            { type: "text", text: "Be terse." },
          ],
        },
      ]),
      "<|im_start|>system\nBe terse.<|im_end|>\n",
    );
    // only system messages are touched
    assert.equal(await render([{ role: "user", content: hdr }]), `<|im_start|>user\n${hdr}<|im_end|>\n`);
  });

  test("add_generation_prompt false and continue_final_message", async () => {
    const messages = [
      { role: "user", content: "Write a haiku" },
      { role: "assistant", content: "Autumn moonlight  " },
    ];
    const noGen = await tok.renderChat({ messages, add_generation_prompt: false });
    assert.equal(noGen, refRenderQwen3(messages, { addGenerationPrompt: false }));
    const cont = await tok.renderChat({ messages, continue_final_message: true });
    // transformers: the render is cut right after the final message (its trailing spaces kept)
    assert.equal(cont, noGen.slice(0, noGen.lastIndexOf("Autumn moonlight  ") + "Autumn moonlight  ".length));
    assert.ok(cont.endsWith("<think>\n\n</think>\n\nAutumn moonlight  "));
    assert.deepEqual(await tok.encodeChat({ messages, continue_final_message: true }), refEncode(cont));
    await assert.rejects(
      tok.renderChat({ messages, continue_final_message: true, add_generation_prompt: true }),
      (e: unknown) => e instanceof TokenizerError && e.code === "bad_request",
    );
  });

  test("long chat (8k+ tokens) with unicode", async () => {
    const messages: RefMessage[] = [{ role: "system", content: mixedText(7, 300, false) }];
    for (let i = 0; i < 12; i++) {
      messages.push({ role: "user", content: mixedText(100 + i, 400, false) });
      messages.push({ role: "assistant", content: mixedText(200 + i, 200, false) });
    }
    messages.push({ role: "user", content: "summarise" });
    const expected = refRenderQwen3(messages);
    const ids = await tok.encodeChat({ messages: messages as never });
    assert.ok(ids.length > 8192, `only ${ids.length}`);
    assert.deepEqual(ids, refEncode(expected));
  });
});

describe("errors are typed and clear", () => {
  test("bad requests", async () => {
    const isBad = (re: RegExp) => (e: unknown) =>
      e instanceof TokenizerError && e.code === "bad_request" && re.test(e.message);
    await assert.rejects(
      tok.encodeChat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] }),
      isBad(/unsupported content part type "image_url"/),
    );
    await assert.rejects(tok.encodeChat({ messages: "hi" as never }), isBad(/messages must be an array/));
    await assert.rejects(tok.encodeChat({ messages: [{ content: "x" } as never] }), isBad(/role/));
    await assert.rejects(
      tok.encodeChat({
        messages: [
          { role: "assistant", content: "", tool_calls: [{ function: { name: "f", arguments: "{bad" } }] },
        ],
      }),
      isBad(/not valid JSON/),
    );
    await assert.rejects(tok.decode([1, -1]), isBad(/out of range/));
    await assert.rejects(tok.decode([10_000_000]), isBad(/out of range/));
    await assert.rejects(tok.encodePrompt(42 as never), isBad(/prompt must be a string/));
  });

  test("missing or broken tokenizer dir", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-tok-"));
    try {
      await assert.rejects(
        loadTokenizer("x", dir),
        (e: unknown) =>
          e instanceof TokenizerError && e.code === "config" && /no tokenizer\.json/.test(e.message),
      );
      writeFileSync(join(dir, "tokenizer.json"), "{not json");
      await assert.rejects(
        loadTokenizer("x", dir),
        (e: unknown) =>
          e instanceof TokenizerError && e.code === "config" && /not valid JSON/.test(e.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("Llama-class tokenizer_config add_bos_token/add_eos_token decide the BOS/EOS of completions", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-tok-llama-"));
    try {
      symlinkSync(join(defaultTokenizerDir(), "tokenizer.json"), join(dir, "tokenizer.json"));
      writeFileSync(
        join(dir, "tokenizer_config.json"),
        JSON.stringify({
          tokenizer_class: "LlamaTokenizerFast",
          add_bos_token: true,
          add_eos_token: true,
          bos_token: "<|endoftext|>",
          eos_token: "<|im_end|>",
          chat_template: "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}",
        }),
      );
      const llama = await loadTokenizer("llama-like", dir);
      assert.equal(llama.core.addsSpecialTokens, true);
      assert.deepEqual(await llama.encodePrompt("Hello world"), [151643, 9707, 1879, 151645]);
      assert.deepEqual(await llama.encodePrompt("Hello world", false), [9707, 1879]);
      const chat = { messages: [{ role: "user", content: "Hello world" }] };
      assert.deepEqual(await llama.encodeChat(chat), [151644, 9707, 1879]);
      assert.deepEqual(
        await llama.encodeChat({ ...chat, add_special_tokens: true }),
        [151643, 151644, 9707, 1879, 151645],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("tokenizer files are loaded once per directory", async () => {
    const a = await loadTokenizer("a", defaultTokenizerDir());
    const b = await loadTokenizer("b");
    assert.equal(a.core, b.core);
    assert.equal(a.model, "a");
    assert.equal(b.model, "b");
  });
});
