/** Property tests: decode(encode(x)) == x for every era, with msgpackr as an independent oracle. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { decodeBatch, encodeBatch, WIRE_ERAS } from "../../../src/protocol/index.ts";
import { batchArb } from "./arbitraries.ts";
import { rawUnpack, referenceDecode } from "./reference-decoder.ts";

for (const era of WIRE_ERAS) {
  test(`era ${era}: decode(encode(batch)) == batch, msgpackr agrees, encoding is canonical`, () => {
    fc.assert(
      fc.property(batchArb(era), (batch) => {
        const bytes = encodeBatch(batch, era);
        const r = decodeBatch(bytes);
        assert.deepStrictEqual(r.batch, batch);
        assert.equal(r.unknownEvents, 0);
        assert.equal(r.unknownKeys, 0);
        assert.deepStrictEqual(referenceDecode(bytes), batch);
        // the wire shape is the era's: batch length, event form
        const raw = rawUnpack(bytes) as unknown[];
        assert.equal(raw.length, era === "2025-04" ? 2 : 3);
        for (const ev of raw[1] as unknown[]) assert.equal(Array.isArray(ev), era !== "2026-07");
        // re-encoding the decoded batch gives the same bytes
        assert.ok(encodeBatch(r.batch, era).equals(bytes));
      }),
      { numRuns: 300 },
    );
  });
}
