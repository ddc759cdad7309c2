/**
 * kv-aware keeps a stream-id slot map across decisions (so a decision allocates no Map): a
 * long-lived policy must decide exactly as a fresh one would, whatever streams came before.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { NamespaceRef, StreamMatch } from "../../../src/index/types.ts";
import { type Candidate, KvAwarePolicy, LoadTracker, type RouteRequest } from "../../../src/routing/index.ts";

const NS: NamespaceRef = { model: "m", lora: null, blockSize: 4 };

/** An index whose answer is set per step: block size -> the matches it returns. */
class ScriptedIndex {
  answers = new Map<number, StreamMatch[]>();
  match(ns: NamespaceRef): StreamMatch[] {
    return this.answers.get(ns.blockSize) ?? [];
  }
}

const match = (streamId: string, blocks: number, gpu: number): StreamMatch => ({
  streamId,
  pod: streamId,
  rank: null,
  matchedBlocks: blocks,
  tiers: { GPU: Math.min(gpu, blocks), CPU: 0, STORAGE: blocks },
});

const candidate = (streamId: string, live: boolean, blockSize?: number): Candidate => ({
  streamId,
  pod: streamId,
  rank: null,
  http: `http://${streamId}:8000`,
  live,
  blockSize,
});

const step = fc.record({
  // streams drawn from a small pool, so they recur across steps, plus some seen only once
  held: fc.array(fc.record({ s: fc.nat(11), blocks: fc.integer({ min: 1, max: 40 }), gpu: fc.nat(40) }), {
    maxLength: 8,
  }),
  cands: fc.array(fc.record({ s: fc.nat(11), live: fc.boolean(), size8: fc.boolean() }), {
    minLength: 1,
    maxLength: 8,
  }),
  mixedSizes: fc.boolean(),
  tokens: fc.integer({ min: 1, max: 200 }),
});

describe("kv-aware across decisions", () => {
  test("property: a long-lived policy decides as a fresh one (streams come, go, change block size)", () => {
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 12 }), (steps) => {
        const index = new ScriptedIndex();
        const loads = new LoadTracker();
        const kept = new KvAwarePolicy(index, loads);
        steps.forEach((st, k) => {
          const seen = new Set<number>();
          const held = st.held.filter((h) => !seen.has(h.s) && seen.add(h.s));
          index.answers = new Map([
            [4, held.map((h) => match(`pod-${h.s}`, h.blocks, h.gpu))],
            [8, held.map((h) => match(`pod-${h.s}`, Math.ceil(h.blocks / 2), h.gpu))],
          ]);
          const cands = st.cands.map((c, i) =>
            candidate(
              c.s === 11 ? `once-${k}-${i}` : `pod-${c.s}`,
              c.live,
              st.mixedSizes && c.size8 ? 8 : undefined,
            ),
          );
          const req: RouteRequest = {
            ns: NS,
            tokenIds: new Array(st.tokens).fill(7),
            candidates: cands,
            dryRun: true,
          };
          const a = kept.route(req);
          const b = new KvAwarePolicy(index, loads).route(req);
          assert.deepEqual(a, b);
        });
      }),
      { seed: 20, numRuns: 400 },
    );
  });

  test("the slot map starts over between decisions past its bound and still finds every match", () => {
    const index = new ScriptedIndex();
    const policy = new KvAwarePolicy(index, new LoadTracker());
    const tokenIds = new Array(64).fill(1);
    // 70,000 streams seen once each (over the 65,536 bound) beside one that stays
    for (let k = 0; k < 70_000; k++) {
      const fresh = `s-${k}`;
      index.answers = new Map([[4, [match("stays", 10, 10), match(fresh, 3, 3)]]]);
      const d = policy.route({
        ns: NS,
        tokenIds,
        candidates: [candidate(fresh, true), candidate("stays", true)],
        dryRun: true,
      });
      const byId = new Map(d.ranked.map((s) => [s.candidate.streamId, s.matchedBlocks]));
      if (byId.get("stays") !== 10 || byId.get(fresh) !== 3) {
        assert.fail(`decision ${k}: stays ${byId.get("stays")}, ${fresh} ${byId.get(fresh)}`);
      }
    }
  });
});
