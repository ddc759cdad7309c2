/**
 * The index over other engines' streams and over cache salts, for both backends:
 *  - SGLang and TensorRT-LLM conformance frames (test/fixtures/engine-kv-events) decoded and
 *    applied: what matches afterwards;
 *  - content-only page hashes (SGLang 2025) that repeat with repeated tokens: every position
 *    keeps its block (regression: a repeated hash used to move the entry to the later position,
 *    so even the first page stopped matching), removals take the latest position first;
 *  - cache salts (vLLM extra_keys, SGLang metadata, TensorRT-LLM cache_salt): a salted request
 *    matches only blocks stored under its salt, an unsalted one never matches salted blocks;
 *  - a differential property: random content-only histories give the same state in both.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { createIndex, type PrefixIndex } from "../../../src/index/index.ts";
import type { NamespaceRef } from "../../../src/index/types.ts";
import { decodeBatch, decodePubMessage } from "../../../src/protocol/index.ts";
import type { EventBatch, KvEvent } from "../../../src/protocol/types.ts";
import { loadEngineConformance } from "../protocol/engine-conformance-data.ts";
import { batch, cleared, hk, removed, stored, stream } from "./helpers.ts";

const BACKENDS = ["sync", "reference"] as const;
const fixtures = loadEngineConformance();
const S = stream("pod-a");

/** Apply the fixture's batches [from, to). */
function apply(idx: PrefixIndex, file: string, from: number, to: number): void {
  const c = fixtures.find((f) => f.file === file)!;
  for (const frames of c.live.slice(from, to)) {
    const b = decodeBatch(decodePubMessage(frames).payload).batch;
    idx.applyBatch(S, b);
  }
}
const matched = (idx: PrefixIndex, ns: NamespaceRef, tokens: number[]) =>
  idx.match(ns, tokens).find((m) => m.streamId === "pod-a")?.matchedBlocks ?? 0;
const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

/** SGLang 2025: one BlockStored per page, content-only hash, parent = previous page. */
function pages(tokens: number[], parent: string | null = null): KvEvent[] {
  let p = parent;
  return tokens.map((t) => {
    const h = hk(t);
    const ev = stored([h], p, [t], { blockSize: 1, medium: null });
    p = h;
    return ev;
  });
}

for (const backend of BACKENDS) {
  describe(`${backend} backend`, () => {
    test("vLLM hybrid attention (vllm-hybrid.json): per-group claims and the coordinator rule", () => {
      const idx = createIndex({ backend });
      const ns = { model: "m", lora: null, blockSize: 16 };
      const prompt = [...range(3000, 128), 1];
      apply(idx, "vllm-hybrid.json", 0, 2);
      // both groups hold every block the prompt can reuse (blocks 4 and 5 never entered the window
      // group, but the hit point 8 needs only blocks 6 and 7 of a 32-token window)
      assert.equal(matched(idx, ns, prompt), 8);
      apply(idx, "vllm-hybrid.json", 2, 3);
      assert.equal(matched(idx, ns, prompt), 8, "the window group's eviction of blocks 0-1 changes nothing");
      assert.equal(idx.streamBlocks("pod-a").length, 8, "nor the full-attention claims");
      apply(idx, "vllm-hybrid.json", 3, 4);
      // full attention now ends at 7; the window group holds 2, 3, 6 (not 4, 5): the first run of
      // two blocks ending at or before 7 ends at 4
      assert.equal(matched(idx, ns, prompt), 4);
      apply(idx, "vllm-hybrid.json", 4, 5);
      assert.equal(matched(idx, ns, prompt), 0);
    });

    const ns1: NamespaceRef = { model: "m", lora: null, blockSize: 1 };

    test("SGLang 2025 frames: a node with repeated pages matches in full, then in order of removal", () => {
      const idx = createIndex({ backend });
      apply(idx, "sglang-2025-content.json", 0, 1);
      assert.equal(matched(idx, ns1, [5, 7, 5, 7, 9]), 5);
      assert.equal(matched(idx, ns1, [5]), 1, "the first page still matches");
      assert.equal(matched(idx, ns1, [5, 7, 5, 9]), 3);
      assert.equal(idx.streamBlocks("pod-a").length, 3, "three distinct engine hashes");
    });

    test("repeated content-only pages stored one event per page; removal takes the latest first", () => {
      const idx = createIndex({ backend });
      idx.applyBatch(S, batch(...pages([5, 7, 5, 7, 9])));
      assert.equal(matched(idx, ns1, [5, 7, 5, 7, 9, 1]), 5);
      // the node's pages go one by one, deepest first: the prefix shrinks from the end
      idx.applyBatch(S, batch(removed([hk(9)], null)));
      assert.equal(matched(idx, ns1, [5, 7, 5, 7, 9]), 4);
      idx.applyBatch(S, batch(removed([hk(7)], null)));
      assert.equal(matched(idx, ns1, [5, 7, 5, 7]), 3);
      idx.applyBatch(S, batch(removed([hk(5)], null)));
      assert.equal(matched(idx, ns1, [5, 7, 5, 7]), 2);
      idx.applyBatch(S, batch(removed([hk(7)], null), removed([hk(5)], null)));
      assert.equal(matched(idx, ns1, [5, 7]), 0);
      assert.equal(idx.streamBlocks("pod-a").length, 0);
      assert.equal(idx.stats().entries, 0);
    });

    test("AllBlocksCleared forgets the aliases too", () => {
      const idx = createIndex({ backend });
      idx.applyBatch(S, batch(...pages([1, 1, 1, 1])));
      assert.equal(matched(idx, ns1, [1, 1, 1, 1]), 4);
      idx.applyBatch(S, batch(cleared()));
      assert.equal(idx.stats().entries, 0);
      idx.applyBatch(S, batch(...pages([1, 2])));
      assert.equal(matched(idx, ns1, [1, 1]), 1);
      assert.equal(matched(idx, ns1, [1, 2]), 2);
    });

    test("SGLang 2026 frames: chained pages, the salted store, the CPU_PINNED backup", () => {
      const ns4: NamespaceRef = { model: "m", lora: null, blockSize: 4 };
      const idx = createIndex({ backend });
      apply(idx, "sglang-2026-chained.json", 0, 3);
      assert.equal(matched(idx, ns4, [...range(100, 12), ...range(200, 4)]), 4);
      // the salted node holds the same tokens as the root node's first two pages
      assert.equal(matched(idx, { ...ns4, salt: "tenant-a" }, range(100, 12)), 2, "salted: its own 2 pages");
      assert.equal(matched(idx, { ...ns4, salt: "tenant-b" }, range(100, 12)), 0, "another salt: nothing");
      apply(idx, "sglang-2026-chained.json", 3, 5);
      const m = idx.match(ns4, [...range(100, 12), ...range(200, 4)])[0]!;
      assert.equal(m.matchedBlocks, 4, "the child page lives on in CPU_PINNED");
      assert.deepEqual(m.tiers, { GPU: 3, CPU: 0, STORAGE: 0 });
      assert.equal(matched(idx, { ...ns4, salt: "tenant-a" }, range(100, 8)), 0, "salted pages removed");
      apply(idx, "sglang-2026-chained.json", 5, 6);
      assert.equal(idx.stats().entries, 0);
    });

    test("TensorRT-LLM (Dynamo publisher) frames: salted and LoRA blocks in their own spaces", () => {
      const ns32: NamespaceRef = { model: "m", lora: null, blockSize: 32 };
      const idx = createIndex({ backend });
      apply(idx, "trtllm-dynamo.json", 0, 4);
      assert.equal(matched(idx, ns32, [...range(1000, 64), ...range(2000, 32)]), 3);
      assert.equal(matched(idx, { ...ns32, salt: "tenant-b" }, range(1000, 64)), 1);
      assert.equal(matched(idx, { ...ns32, lora: "sql-adapter" }, range(2000, 32)), 1);
      apply(idx, "trtllm-dynamo.json", 4, 5);
      assert.equal(matched(idx, ns32, [...range(1000, 64), ...range(2000, 32)]), 2);
    });

    test("vLLM's salt in the first block's extra_keys: only the same salt matches", () => {
      const ns: NamespaceRef = { model: "m", lora: null, blockSize: 4 };
      const idx = createIndex({ backend });
      const t = range(1, 8);
      idx.applyBatch(S, batch(stored([hk(1), hk(2)], null, t, { extraKeys: [["s1"], null] })));
      assert.equal(matched(idx, ns, t), 0, "unsalted request: no salted block");
      assert.equal(matched(idx, { ...ns, salt: "s1" }, t), 2);
      assert.equal(matched(idx, { ...ns, salt: "s2" }, t), 0);
      // a child stored later chains from the salted parent
      idx.applyBatch(S, batch(stored([hk(3)], hk(2), range(9, 4))));
      assert.equal(matched(idx, { ...ns, salt: "s1" }, range(1, 12)), 3);
      // unsalted blocks of the same tokens: only unsalted requests match them
      idx.applyBatch(S, batch(stored([hk(11), hk(12)], null, t)));
      assert.equal(matched(idx, ns, t), 2);
      assert.equal(matched(idx, { ...ns, salt: "s1" }, range(1, 12)), 3);
      // with a LoRA, vLLM puts the adapter name first in the tuple: the salt is the other string
      idx.applyBatch(
        S,
        batch(stored([hk(21)], null, t.slice(0, 4), { loraName: "ad", extraKeys: [["ad", "s1"]] })),
      );
      assert.equal(matched(idx, { ...ns, lora: "ad", salt: "s1" }, t), 1);
      // multimodal content besides the salt: unmatchable from token ids
      idx.applyBatch(S, batch(stored([hk(31)], null, range(50, 4), { extraKeys: [[["mmhash", 0], "s1"]] })));
      assert.equal(matched(idx, { ...ns, salt: "s1" }, range(50, 4)), 0);
    });
  });
}

/** A random content-only history: nodes of pages over a 3-token alphabet, node removals, clears. */
const historyArb = fc.array(
  fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({
        op: fc.constant("store" as const),
        toks: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 6 }),
        under: fc.nat(8),
      }),
    },
    { weight: 3, arbitrary: fc.record({ op: fc.constant("remove" as const), node: fc.nat(8) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("clear" as const) }) },
  ),
  { maxLength: 30 },
);

test("property: both backends agree on random content-only histories (aliases, removals, clears)", () => {
  fc.assert(
    fc.property(
      historyArb,
      fc.array(fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 8 }), { minLength: 1, maxLength: 6 }),
      (history, queries) => {
        const a = createIndex({ backend: "sync" });
        const b = createIndex({ backend: "reference" });
        const nodes: number[][] = [];
        for (const step of history) {
          let bt: EventBatch;
          if (step.op === "store") {
            const parent = nodes.length > 0 ? nodes[step.under % nodes.length]! : null;
            const parentHash = parent === null ? null : hk(parent.at(-1)!);
            bt = batch(...pages(step.toks, parentHash));
            nodes.push(step.toks);
          } else if (step.op === "remove") {
            if (nodes.length === 0) continue;
            const n = nodes.splice(step.node % nodes.length, 1)[0]!;
            bt = batch(...[...n].reverse().map((t) => removed([hk(t)], null)));
          } else {
            nodes.length = 0;
            bt = batch(cleared());
          }
          a.applyBatch(S, bt);
          b.applyBatch(S, bt);
        }
        const ns: NamespaceRef = { model: "m", lora: null, blockSize: 1 };
        for (const q of queries) assert.deepStrictEqual(a.match(ns, q), b.match(ns, q), `query ${q}`);
        const key = (x: { hash: string; tiers: string[] }) => `${x.hash}:${x.tiers.join(",")}`;
        assert.deepStrictEqual(
          a.streamBlocks("pod-a").map(key).sort(),
          b.streamBlocks("pod-a").map(key).sort(),
        );
        assert.equal(a.stats().entries, b.stats().entries);
      },
    ),
    { seed: 1616, numRuns: 400 },
  );
});
