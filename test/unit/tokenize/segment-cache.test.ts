import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import fc from "fast-check";
import {
  type HfTokenizer,
  loadTokenizer,
  SegmentCache,
  segmentationPlan,
  splitAtBoundary,
} from "../../../src/tokenize/index.ts";
import { refEncode } from "./reference.ts";

let tok: HfTokenizer;
before(async () => {
  tok = await loadTokenizer();
});

const SPECIAL_BITS = [
  "<|im_start|>",
  "<|im_end|>",
  "<|endoftext|>",
  "<think>",
  "</think>",
  "<tool_call>",
  "<|im_st",
  "art|>",
  "<|",
  "|>",
  "\n",
  " ",
  "assistant\n",
];

const textArb = fc
  .array(
    fc.oneof(
      fc.string({ unit: "grapheme", maxLength: 12 }),
      fc.string({ unit: "grapheme-ascii", maxLength: 12 }),
      fc.constantFrom(...SPECIAL_BITS),
      fc.constantFrom("你好", "🎉", "e\u0301", "مرحبا", "  \t", "123", "'s", "'LL"),
    ),
    { maxLength: 12 },
  )
  .map((parts) => parts.join(""));

const messageArb = fc.record({
  role: fc.constantFrom("system", "user", "assistant", "tool"),
  content: textArb,
});

describe("segment reuse gives the same ids as encoding the whole text", () => {
  test("random texts with special tokens (cached, then warm cache) equal the uncached encode", () => {
    fc.assert(
      fc.property(textArb, textArb, (a, b) => {
        const text = `${a}<|im_start|>${b}<|im_start|>${a}`;
        const whole = tok.encodeRaw(text, false);
        assert.deepEqual(tok.encodeTextSync(text, false), whole);
        assert.deepEqual(tok.encodeTextSync(text, false), whole);
        assert.deepEqual(tok.encodeTextSync(text, true), tok.encodeRaw(text, true));
      }),
      { numRuns: 300 },
    );
  });

  test("random chats, and chats extending a cached prefix, equal the uncached encode", () => {
    fc.assert(
      fc.property(
        fc.array(messageArb, { minLength: 1, maxLength: 6 }),
        fc.array(messageArb, { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        (history, more, thinking) => {
          for (const messages of [history, [...history, ...more]]) {
            const req = { messages, chat_template_kwargs: { enable_thinking: thinking } };
            const text = tok.renderChatSync(req);
            assert.deepEqual(tok.encodeChatSync(req), tok.encodeRaw(text, false));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test("cached chat ids also equal the independent reference tokenizer", () => {
    fc.assert(
      fc.property(fc.array(messageArb, { minLength: 1, maxLength: 5 }), (messages) => {
        const req = { messages };
        tok.encodeChatSync(req); // warm the cache
        assert.deepEqual(tok.encodeChatSync(req), refEncode(tok.renderChatSync(req)));
      }),
      { numRuns: 100 },
    );
  });

  test("a shared conversation prefix is served from the cache", () => {
    const history = [
      { role: "system", content: `system prompt ${"lorem ipsum ".repeat(200)}` },
      { role: "user", content: `question one ${"dolor sit amet ".repeat(200)}` },
    ];
    tok.encodeChatSync({ messages: history });
    const before = tok.cacheStats();
    const ids = tok.encodeChatSync({ messages: [...history, { role: "user", content: "and another" }] });
    const after = tok.cacheStats();
    assert.ok(after.hits - before.hits >= 2, `expected ≥2 segment hits, got ${after.hits - before.hits}`);
    const text = tok.renderChatSync({ messages: [...history, { role: "user", content: "and another" }] });
    assert.deepEqual(ids, tok.encodeRaw(text, false));
  });
});

describe("splitAtBoundary", () => {
  test("cuts before each boundary occurrence and loses nothing", () => {
    const b = "<|im_start|>";
    assert.deepEqual(splitAtBoundary("", b), [""]);
    assert.deepEqual(splitAtBoundary("abc", b), ["abc"]);
    assert.deepEqual(splitAtBoundary(`${b}x${b}y`, b), [`${b}x`, `${b}y`]);
    assert.deepEqual(splitAtBoundary(`pre${b}${b}z`, b), ["pre", b, `${b}z`]);
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.string(), fc.constant(b))), (parts) => {
        const text = parts.join("");
        const segs = splitAtBoundary(text, b);
        assert.equal(segs.join(""), text);
        for (const s of segs.slice(1)) assert.ok(s.startsWith(b));
      }),
    );
  });
});

describe("segmentationPlan refuses cuts it cannot prove safe", () => {
  const tmpl = "{{ '<|s|>' }}{{ '<|s|>' }}{{ '<|e|>' }}";
  const tokenJson = (added: object[], extra: object = {}) => ({
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false },
    ...extra,
  });
  const t = (content: string, more: object = {}) => ({
    id: 1,
    content,
    special: true,
    normalized: false,
    lstrip: false,
    rstrip: false,
    single_word: false,
    ...more,
  });

  test("picks the special token used most by the template", () => {
    assert.deepEqual(segmentationPlan(tokenJson([t("<|s|>"), t("<|e|>")]), tmpl), {
      boundary: "<|s|>",
      reason: "ok",
    });
  });
  test("no template or no special tokens → no cuts", () => {
    assert.equal(segmentationPlan(tokenJson([t("<|s|>")]), null).boundary, null);
    assert.equal(segmentationPlan(tokenJson([]), tmpl).boundary, null);
  });
  test("lstrip/rstrip tokens → no cuts", () => {
    assert.equal(
      segmentationPlan(tokenJson([t("<|s|>"), t("<|e|>", { lstrip: true })]), tmpl).boundary,
      null,
    );
  });
  test("a token that can match across the cut → no cuts", () => {
    assert.equal(segmentationPlan(tokenJson([t("<|s|>"), t("x<|")]), tmpl).boundary, null);
    assert.equal(segmentationPlan(tokenJson([t("<|s|>"), t("ab<|s|>")]), tmpl).boundary, null);
  });
  test("Metaspace / prefix-space pre-tokenizers → no cuts", () => {
    const meta = { pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first" } };
    assert.equal(segmentationPlan(tokenJson([t("<|s|>")], meta), tmpl).boundary, null);
    const bl = { pre_tokenizer: { type: "ByteLevel", add_prefix_space: true } };
    assert.equal(segmentationPlan(tokenJson([t("<|s|>")], bl), tmpl).boundary, null);
  });
});

describe("SegmentCache bounds", () => {
  test("evicts least recently used by entries and by tokens", () => {
    const c = new SegmentCache({ maxEntries: 3, maxTokens: 10 });
    c.set("a", [1, 2]);
    c.set("b", [3]);
    c.set("c", [4]);
    assert.ok(c.get("a")); // a is now most recent
    c.set("d", [5]); // evicts b (least recent)
    assert.equal(c.get("b"), undefined);
    assert.deepEqual([...(c.get("a") ?? [])], [1, 2]);
    c.set("e", [1, 2, 3, 4, 5, 6, 7, 8]); // 2+1+1+8 > 10 tokens → evict until it fits
    const s = c.stats();
    assert.ok(s.tokens <= 10 && s.entries <= 3, JSON.stringify(s));
    assert.deepEqual([...(c.get("e") ?? [])], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(s.evictions >= 2);
  });
  test("bounded by total key chars too", () => {
    const c = new SegmentCache({ maxChars: 10 });
    c.set("aaaa", [1]);
    c.set("bbbb", [2]);
    c.set("cccc", [3]); // 12 chars > 10 → evict "aaaa"
    assert.equal(c.get("aaaa"), undefined);
    assert.equal(c.stats().chars, 8);
    assert.equal(c.stats().entries, 2);
  });

  test("oversized entries are not cached", () => {
    const c = new SegmentCache({ maxTokens: 4, maxSegmentChars: 5 });
    c.set("abcdefg", [1]);
    c.set("x", [1, 2, 3, 4, 5]);
    assert.equal(c.stats().entries, 0);
  });
});
