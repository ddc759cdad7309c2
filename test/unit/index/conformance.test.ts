/**
 * The real decoder feeding the index: every conformance capture (test/fixtures/vllm-kv-events,
 * all wire eras and hash forms) decoded with `decodeBatch` and applied in seq order ends in the
 * documented final state (only the last two root blocks cached), and the intermediate states
 * match what the scripted sequence implies.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { createIndex } from "../../../src/index/index.ts";
import { decodeBatch, hashToText } from "../../../src/protocol/index.ts";

const DIR = join(import.meta.dirname, "../../fixtures/vllm-kv-events");
const files = readdirSync(DIR).filter((f) => f.endsWith(".json"));
const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

for (const file of files) {
  test(`conformance ${file}: decoded batches drive the index to the documented state`, () => {
    const fx = JSON.parse(readFileSync(join(DIR, file), "utf8")) as { live: string[][] };
    for (const backend of ["sync", "reference"] as const) {
      const ix = createIndex({ backend });
      const ref = { streamId: "pod-a", pod: "pod-a", rank: null, model: "m" };
      const ns = { model: "m", lora: null, blockSize: 16 };
      const blocks = () =>
        ix
          .streamBlocks("pod-a")
          .map((b) => `${hashToText(b.hash)}:${b.tiers.join(",")}`)
          .sort();
      const matched = (tokens: number[]) => ix.match(ns, tokens)[0]?.matchedBlocks ?? 0;
      fx.live.forEach((frames, i) => {
        const { batch } = decodeBatch(Buffer.from(frames[2], "hex"));
        ix.applyBatch(ref, batch);
        if (i === 2) {
          // two root blocks (1000..1031) and a child of the second (2000..2015)
          assert.equal(matched([...range(1000, 32), ...range(2000, 16)]), 3, `${file} after batch 2`);
        }
        if (i === 4) {
          // the child was removed; a CPU-tier root (4000..) was stored
          assert.equal(matched([...range(1000, 32), ...range(2000, 16)]), 2);
          assert.equal(matched(range(4000, 16)), 1);
          // the first era (April 2025) has no medium field: null means GPU
          const tier = file.includes("0be6d05b5") ? "GPU" : "CPU";
          assert.equal(ix.match(ns, range(4000, 16))[0].tiers[tier], 1);
        }
      });
      assert.equal(blocks().length, 2, `${file}: ${blocks()}`);
      assert.ok(blocks().every((b) => b.endsWith(":GPU")));
      assert.equal(matched(range(5000, 32)), 2);
      assert.equal(matched(range(1000, 32)), 0);
    }
  });
}
