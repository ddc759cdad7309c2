/**
 * kvsync must render chat templates exactly as vLLM does, i.e. as Python's jinja2 does. The
 * expected renders come from scripts/fixtures/chat-template-strip.py (run by hand with jinja2;
 * CI only reads its JSON): Qwen3's template on chats whose render depends on `strip('\n')`
 * stripping newlines only, and a small template calling every strip form on strings where
 * Python's and JS's whitespace sets differ.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { Template } from "@huggingface/jinja";
import { templateDigest } from "../../../src/tokenize/fast-templates.ts";
import { ChatTemplate, defaultTokenizerDir } from "../../../src/tokenize/index.ts";
import { pythonStrip, STRIP_FN, usePythonStrip } from "../../../src/tokenize/jinja-python-strip.ts";
import { pyStripChars } from "../../../src/tokenize/py-str.ts";
import type { ChatRequestLike } from "../../../src/tokenize/types.ts";

interface Fixture {
  jinja2: string;
  qwen3_template_sha256: string;
  chat: Array<{ name: string; request: ChatRequestLike; expected: string }>;
  strip_template: string;
  strip_renders: Array<{ vars: { x: string; c: string }; expected: string }>;
}

const FIXTURE = JSON.parse(
  readFileSync(join(import.meta.dirname, "../../fixtures/chat-templates/python-jinja2-renders.json"), "utf8"),
) as Fixture;
const QWEN3 = (
  JSON.parse(readFileSync(join(defaultTokenizerDir(), "tokenizer_config.json"), "utf8")) as {
    chat_template: string;
  }
).chat_template;
const SPECIAL = { bos_token: null, eos_token: "<|im_end|>", pad_token: "<|endoftext|>" };

describe("renders equal Python jinja2's (vLLM's) renders", () => {
  test("the fixture was generated from the template shipped here", () => {
    assert.equal(FIXTURE.qwen3_template_sha256, templateDigest(QWEN3));
    assert.ok(FIXTURE.chat.length >= 50, `only ${FIXTURE.chat.length} chat cases`);
  });

  for (const [label, fastPath] of [
    ["direct renderer", true],
    ["interpreter", false],
  ] as const) {
    test(`Qwen3 chats through the ${label}`, () => {
      const t = new ChatTemplate({ template: QWEN3, specialTokens: SPECIAL, fastPath });
      for (const c of FIXTURE.chat) {
        assert.equal(t.render(structuredClone(c.request)), c.expected, c.name);
      }
      // each path really served the renders it claims to test
      if (fastPath) assert.equal(t.interpretedRenders, 0);
      else assert.equal(t.fastRenders, 0);
    });
  }

  test("every strip form, with and without chars, through the interpreter", () => {
    const t = new Template(FIXTURE.strip_template);
    usePythonStrip(t);
    for (const c of FIXTURE.strip_renders) {
      assert.equal(t.render({ ...c.vars, [STRIP_FN]: pythonStrip }), c.expected, JSON.stringify(c.vars));
    }
  });

  test("pyStripChars strips code points (astral chars as one) from the chosen ends", () => {
    assert.equal(pyStripChars("😀a😀", "strip", "😀"), "a");
    assert.equal(pyStripChars("\ud83d\ude00x", "lstrip", "\ude00"), "\ud83d\ude00x");
    assert.equal(pyStripChars("x\ud83d\ude00", "rstrip", "\ud83d"), "x\ud83d\ude00");
    assert.equal(pyStripChars("aaa", "strip", "a"), "");
    assert.equal(pyStripChars(" \ufeff x \ufeff ", "strip", null), "\ufeff x \ufeff");
    assert.equal(pyStripChars("\x1c\x85 x", "lstrip", undefined), "x");
  });

  test("Python's TypeErrors stay errors (a bad argument does not silently strip whitespace)", () => {
    const render = (src: string, vars: Record<string, unknown>) => {
      const t = new Template(src);
      usePythonStrip(t);
      return t.render({ ...vars, [STRIP_FN]: pythonStrip });
    };
    assert.throws(() => render("{{ x.strip(1) }}", { x: " a " }), /strip arg must be None or str/);
    assert.throws(() => render("{{ x.rstrip('a', 'b') }}", { x: "a" }), /at most 1 argument/);
    assert.throws(() => render("{{ x.lstrip() }}", { x: [1] }), /only supported on strings/);
    assert.throws(() => render("{{ x.strip(chars='a') }}", { x: "a" }), /got keyword arguments/);
    assert.equal(render("{{ x.strip(y) }}", { x: " a ", y: null }), "a");
  });
});
