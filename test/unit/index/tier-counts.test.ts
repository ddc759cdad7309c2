/**
 * `streamTierCounts` (the dashboard's blocks per tier) agrees with counting `streamBlocks`, for
 * random stores and removals on three tiers and two streams, from a fixed seed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { createIndex } from "../../../src/index/index.ts";
import type { TierCounts } from "../../../src/index/types.ts";
import { batch, hk, removed, stored, stream, toks } from "./helpers.ts";

const TIERS = ["GPU", "CPU", "STORAGE"] as const;

test("streamTierCounts equals the tiers of streamBlocks, counted", () => {
  const op = fc.record({
    s: fc.integer({ min: 0, max: 1 }),
    remove: fc.boolean(),
    h: fc.integer({ min: 1, max: 30 }),
    tier: fc.constantFrom(...TIERS),
  });
  fc.assert(
    fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
      const index = createIndex();
      const refs = [stream("a"), stream("b")];
      for (const o of ops) {
        const ev = o.remove
          ? removed([hk(o.h)], o.tier)
          : stored([hk(o.h)], null, toks([o.h]), { medium: o.tier });
        index.applyBatch(refs[o.s], batch(ev));
      }
      for (const r of [...refs, stream("unknown")]) {
        const want: TierCounts = { GPU: 0, CPU: 0, STORAGE: 0 };
        for (const c of index.streamBlocks(r.streamId)) for (const t of c.tiers) want[t]++;
        const out: TierCounts = { GPU: 9, CPU: 9, STORAGE: 9 };
        assert.deepEqual(index.streamTierCounts!(r.streamId, out), want);
      }
    }),
  );
});
