/**
 * Property test: events with malformed content (wrong types, odd block sizes, partial tokens,
 * unknown media and types, extra keys, other groups) never throw, and the fast index stays equal
 * to the reference on every stream and for every query.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { createIndex } from "../../../src/index/index.ts";
import type { KvEvent } from "../../../src/protocol/types.ts";
import { hk, stream, toks } from "./helpers.ts";

const hashArb = fc.oneof(
  { weight: 8, arbitrary: fc.nat(12).map((n) => hk(n + 1)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(`n${"\xff".repeat(8)}`, `b${"\x01".repeat(32)}`, "", "u", "weird\u1234"),
  },
  { weight: 1, arbitrary: fc.constantFrom(null, 7, undefined, {}) },
);
const tokensArb = fc.oneof(
  { weight: 6, arbitrary: fc.array(fc.nat(3), { maxLength: 4 }).map((ids) => toks(ids)) },
  { weight: 1, arbitrary: fc.array(fc.integer({ min: -5, max: 500 }), { maxLength: 13 }) },
  { weight: 1, arbitrary: fc.constantFrom(null, "tokens", [1.5, Number.NaN, "x"], []) },
);
const evArb = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      type: fc.constant("BlockStored"),
      blockHashes: fc.oneof({ weight: 9, arbitrary: fc.array(hashArb, { maxLength: 4 }) }, fc.constant(null)),
      parentBlockHash: fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, hashArb),
      tokenIds: tokensArb,
      blockSize: fc.constantFrom(4, 4, 4, 2, 0, -1, 3.5, Number.NaN, "4"),
      loraId: fc.constantFrom(null, null, 1),
      medium: fc.constantFrom(null, "GPU", "CPU", "STORAGE", "FS", 3),
      loraName: fc.constantFrom(null, null, "a"),
      extraKeys: fc.constantFrom(null, null, [null], [["mm", 1]], "x"),
      groupIdx: fc.constantFrom(null, null, 0, 1),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      type: fc.constant("BlockRemoved"),
      blockHashes: fc.oneof({ weight: 9, arbitrary: fc.array(hashArb, { maxLength: 4 }) }, fc.constant(7)),
      medium: fc.constantFrom(null, "GPU", "CPU", "STORAGE", "OBJ"),
      groupIdx: fc.constantFrom(null, null, 0, 2),
    }),
  },
  { weight: 1, arbitrary: fc.constantFrom({ type: "AllBlocksCleared" }, { type: "Nope" }, null, 5) },
);

test("malformed events never throw; fast index == reference", () => {
  let seen = 0;
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(2), fc.array(evArb, { maxLength: 3 })), { maxLength: 40, size: "max" }),
      fc.integer({ min: 2, max: 30 }),
      (batches, cap) => {
        const fast = createIndex({ backend: "sync", initialCapacity: 16, pageBits: 2, maxEntries: cap });
        const ref = createIndex({ backend: "reference", maxEntries: cap });
        const ss = [stream("a"), stream("b"), stream("c", "m2")];
        for (const [s, evs] of batches) {
          const b = { ts: 0, events: evs as unknown as KvEvent[], dpRank: null };
          fast.applyBatch(ss[s], b);
          ref.applyBatch(ss[s], b);
        }
        for (const s of ss) {
          const norm = (ix: typeof fast) =>
            ix
              .streamBlocks(s.streamId)
              .map((c) => `${c.hash}=${c.tiers}`)
              .sort();
          assert.deepEqual(norm(fast), norm(ref));
        }
        for (const model of ["m", "m2"]) {
          for (const lora of [null, "a", "1"]) {
            for (const ids of [[0], [0, 1], [1, 2, 3], [3, 3, 3, 3]]) {
              const ns = { model, lora, blockSize: 4 };
              const fm = fast.match(ns, toks(ids));
              assert.deepEqual(fm, ref.match(ns, toks(ids)));
              seen += fm.length;
            }
          }
        }
        const f = fast.stats();
        const r = ref.stats();
        assert.deepEqual(
          [f.entries, f.evictions, f.unknownRemovals, f.orphanStores, f.ignoredEvents],
          [r.entries, r.evictions, r.unknownRemovals, r.orphanStores, r.ignoredEvents],
        );
      },
    ),
    { numRuns: 400 },
  );
  assert.ok(seen > 100, `non-empty matches ${seen}`);
});
