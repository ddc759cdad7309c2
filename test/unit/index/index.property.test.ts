/**
 * Property test: random engine histories (stores, offloads, tier removals, clears, stream drops,
 * engine restarts, and duplicate physical copies of a hash: a batch applied twice, or a store that
 * recomputes blocks the engine already holds, as vLLM does when two requests compute the same
 * prefix concurrently) applied to the fast index and to the reference oracle. The simulated
 * engine counts copies per (hash, tier); a BlockRemoved removes one copy.
 * Checked after every history:
 *  - streamBlocks of the fast index == the reference (always, also under tiny caps with LRU
 *    evictions), and == the simulated engine's cache for streams whose view is complete;
 *  - match == the reference's brute-force match, and == a brute-force match computed from the
 *    simulated engines' caches for complete streams.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { createIndex, MAX_EXTRA_COPIES, type PrefixIndex } from "../../../src/index/index.ts";
import type { NamespaceRef, StreamRef } from "../../../src/index/types.ts";
import type { EventBatch, HashKey, KvEvent } from "../../../src/protocol/types.ts";
import { batch, cleared, hk, removed, stored, stream, toks } from "./helpers.ts";

const BS = 4;
const STREAMS: StreamRef[] = [
  { streamId: "a", pod: "a", rank: null, model: "m" },
  { streamId: "b#0", pod: "b", rank: 0, model: "m" },
  { streamId: "b#1", pod: "b", rank: 1, model: "m" },
  { streamId: "c", pod: "c", rank: null, model: "m2" },
];
const LORAS = [null, "ad1"] as const;
const TIERS = ["GPU", "CPU", "STORAGE"] as const;

interface EngBlock {
  lora: string | null;
  /** block ids of the full prefix up to and including this block */
  prefix: string;
  /** physical copies per tier (the index counts up to 1 + MAX_EXTRA_COPIES; see rules.ts) */
  tiers: Map<string, number>;
}

function addCopy(e: EngBlock, tier: string): void {
  e.tiers.set(tier, Math.min(1 + MAX_EXTRA_COPIES, (e.tiers.get(tier) ?? 0) + 1));
}

class Engine {
  seed = 0;
  cache = new Map<HashKey, EngBlock>();
  /** the index's view of this stream is complete (no drop since the last restart/clear) */
  complete = true;
  constructor(
    readonly idx: number,
    private readonly ids: Map<string, number>,
  ) {}
  hashOf(lora: string | null, prefix: string): HashKey {
    const k = `${this.idx}|${this.seed}|${lora}|${prefix}`;
    let id = this.ids.get(k);
    if (id === undefined) {
      id = this.ids.size + 1;
      this.ids.set(k, id);
    }
    return hk(id);
  }
}

type Cmd =
  | { k: "store"; s: number; prompt: number; upto: number; lora: number; dup: boolean; fresh: boolean }
  | { k: "offload"; s: number; pick: number[]; tier: number; dup: boolean }
  | { k: "remove"; s: number; pick: number[]; tier: number; nullMedium: boolean; dup: boolean }
  | { k: "clear"; s: number; dup: boolean }
  | { k: "drop"; s: number }
  | { k: "restart"; s: number };

const sArb = fc.integer({ min: 0, max: STREAMS.length - 1 });
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant("store" as const),
      s: sArb,
      prompt: fc.nat(5),
      upto: fc.integer({ min: 1, max: 6 }),
      lora: fc.nat(1),
      dup: fc.boolean(),
      fresh: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant("offload" as const),
      s: sArb,
      pick: fc.array(fc.nat(50), { maxLength: 4 }),
      tier: fc.integer({ min: 1, max: 2 }),
      dup: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant("remove" as const),
      s: sArb,
      pick: fc.array(fc.nat(50), { minLength: 1, maxLength: 4 }),
      tier: fc.nat(2),
      nullMedium: fc.boolean(),
      dup: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("clear" as const), s: sArb, dup: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("drop" as const), s: sArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("restart" as const), s: sArb }) },
);

/** prompts as block-id lists sharing prefixes: ids are small so many blocks coincide */
const promptsArb = fc.array(fc.array(fc.nat(2), { minLength: 6, maxLength: 6 }), {
  minLength: 6,
  maxLength: 6,
});

/** small pages and per-shard table rebuilds: the paths a large index takes, at test sizes */
const SMALL_SYNC = { backend: "sync", initialCapacity: 16, pageBits: 5, wholeRebuildBelow: 0 } as const;

function run(
  prompts: number[][],
  cmds: Cmd[],
  caps: { maxEntries?: number; maxEntriesPerStream?: number; copies?: "count" | "set" },
) {
  const fast = createIndex({ ...SMALL_SYNC, ...caps });
  const ref = createIndex({ backend: "reference", ...caps });
  const ids = new Map<string, number>();
  const engines = STREAMS.map((_, i) => new Engine(i, ids));
  // the engine model counts copies: compared with the index only when the index counts them too
  const capped =
    caps.maxEntries !== undefined || caps.maxEntriesPerStream !== undefined || caps.copies !== "count";
  const send = (s: number, events: KvEvent[], dup: boolean) => {
    const b: EventBatch = { ts: 0, events, dpRank: STREAMS[s].rank };
    for (const ix of [fast, ref]) {
      ix.applyBatch(STREAMS[s], b);
      if (dup) ix.applyBatch(STREAMS[s], b);
    }
  };
  for (const c of cmds) {
    const eng = engines[c.s];
    const held = [...eng.cache.keys()];
    if (c.k === "store") {
      const lora = LORAS[c.lora];
      const blocks = prompts[c.prompt].slice(0, c.upto);
      const hashes = blocks.map((_, i) => eng.hashOf(lora, blocks.slice(0, i + 1).join(".")));
      let start = 0;
      // fresh: a request computed the blocks again concurrently (another copy of each)
      if (!c.fresh) while (start < blocks.length && eng.cache.get(hashes[start])?.tiers.has("GPU")) start++;
      if (start === blocks.length) continue;
      const ev = stored(
        hashes.slice(start),
        start === 0 ? null : hashes[start - 1],
        toks(blocks.slice(start), BS),
        {
          blockSize: BS,
          loraName: lora,
        },
      );
      for (let i = start; i < blocks.length; i++) {
        const h = hashes[i];
        const e = eng.cache.get(h) ?? {
          lora,
          prefix: blocks.slice(0, i + 1).join("."),
          tiers: new Map<string, number>(),
        };
        addCopy(e, "GPU");
        if (c.dup) addCopy(e, "GPU");
        eng.cache.set(h, e);
      }
      send(c.s, [ev], c.dup);
    } else if (c.k === "offload") {
      const tier = TIERS[c.tier];
      const hs = [...new Set(c.pick.filter(() => held.length > 0).map((p) => held[p % held.length]))];
      if (hs.length === 0) continue;
      for (const h of hs) {
        addCopy(eng.cache.get(h)!, tier);
        if (c.dup) addCopy(eng.cache.get(h)!, tier);
      }
      send(c.s, [stored(hs, null, [], { blockSize: BS, medium: tier })], c.dup);
    } else if (c.k === "remove") {
      const tier = TIERS[c.tier];
      const hs = [...new Set(c.pick.filter(() => held.length > 0).map((p) => held[p % held.length]))].filter(
        (h) => eng.cache.get(h)!.tiers.has(tier),
      );
      if (hs.length === 0) continue;
      for (const h of hs) {
        const e = eng.cache.get(h)!;
        // one copy per BlockRemoved (the batch is applied twice when dup)
        for (let k = c.dup ? 2 : 1; k > 0 && e.tiers.has(tier); k--) {
          const n = e.tiers.get(tier)! - 1;
          if (n > 0) e.tiers.set(tier, n);
          else e.tiers.delete(tier);
        }
        if (e.tiers.size === 0) eng.cache.delete(h);
      }
      send(c.s, [removed(hs, tier === "GPU" && c.nullMedium ? null : tier)], c.dup);
    } else if (c.k === "clear") {
      eng.cache.clear();
      eng.complete = true;
      send(c.s, [{ type: "AllBlocksCleared" }], c.dup);
    } else if (c.k === "drop") {
      fast.dropStream(STREAMS[c.s].streamId);
      ref.dropStream(STREAMS[c.s].streamId);
      eng.complete = false;
    } else {
      eng.seed++;
      eng.cache.clear();
      eng.complete = true;
      fast.dropStream(STREAMS[c.s].streamId);
      ref.dropStream(STREAMS[c.s].streamId);
    }
  }

  const norm = (ix: PrefixIndex, id: string) =>
    ix
      .streamBlocks(id)
      .map((b) => `${b.hash}=${b.tiers.join(",")}`)
      .sort();
  for (let s = 0; s < STREAMS.length; s++) {
    const id = STREAMS[s].streamId;
    assert.deepEqual(norm(fast, id), norm(ref, id), `streamBlocks(${id}) fast vs reference`);
    if (!capped && engines[s].complete) {
      const truth = [...engines[s].cache].map(
        ([h, e]) => `${h}=${TIERS.filter((t) => e.tiers.has(t)).join(",")}`,
      );
      assert.deepEqual(norm(fast, id), truth.sort(), `streamBlocks(${id}) vs engine`);
    }
  }
  const fs = fast.stats();
  const rs = ref.stats();
  assert.deepEqual(
    [fs.entries, fs.streams, fs.evictions, fs.unknownRemovals, fs.orphanStores, fs.duplicateStores],
    [rs.entries, rs.streams, rs.evictions, rs.unknownRemovals, rs.orphanStores, rs.duplicateStores],
  );

  const queries: [NamespaceRef, number[]][] = [];
  for (const p of prompts) {
    for (const model of ["m", "m2"]) {
      for (const lora of LORAS) queries.push([{ model, lora, blockSize: BS }, toks(p, BS)]);
    }
  }
  queries.push([{ model: "m", lora: null, blockSize: 2 }, toks(prompts[0], BS)]);
  for (const [ns, tokens] of queries) {
    const fm = fast.match(ns, tokens);
    assert.deepEqual(fm, ref.match(ns, tokens), `match fast vs reference ${JSON.stringify(ns)}`);
    if (capped || ns.blockSize !== BS) continue;
    // brute force from the engines' caches, for streams whose index view is complete
    const blocks = prompts[queries.findIndex((q) => q[1] === tokens) >> 2];
    for (let s = 0; s < STREAMS.length; s++) {
      if (!engines[s].complete || STREAMS[s].model !== ns.model) continue;
      const byPrefix = new Map<string, Map<string, number>>();
      for (const e of engines[s].cache.values()) if (e.lora === ns.lora) byPrefix.set(e.prefix, e.tiers);
      let n = 0;
      const run = { GPU: 0, CPU: 0, STORAGE: 0 };
      const alive = new Set<string>(TIERS);
      while (n < blocks.length) {
        const t = byPrefix.get(blocks.slice(0, n + 1).join("."));
        if (!t) break;
        n++;
        for (const k of TIERS) {
          if (!t.has(k)) alive.delete(k);
          if (alive.has(k)) run[k]++;
        }
      }
      const got = fm.find((m) => m.streamId === STREAMS[s].streamId);
      if (n === 0) assert.equal(got, undefined, `stream ${STREAMS[s].streamId} should not match`);
      else assert.deepEqual([got?.matchedBlocks, got?.tiers], [n, run], `brute force ${STREAMS[s].streamId}`);
    }
  }
}

test("random histories: index == reference model == engine caches (no caps)", () => {
  fc.assert(
    fc.property(promptsArb, fc.array(cmdArb, { maxLength: 80, size: "max" }), (prompts, cmds) =>
      run(prompts, cmds, { copies: "count" }),
    ),
    { numRuns: 300 },
  );
});

test('random histories with copies: "set" (first BlockRemoved drops the claim): fast == reference', () => {
  fc.assert(
    fc.property(promptsArb, fc.array(cmdArb, { maxLength: 80, size: "max" }), (prompts, cmds) =>
      run(prompts, cmds, { copies: "set" }),
    ),
    { numRuns: 150 },
  );
});

test("random histories under tiny caps: LRU evictions identical to the reference", () => {
  fc.assert(
    fc.property(
      promptsArb,
      fc.array(cmdArb, { maxLength: 80, size: "max" }),
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 6 }),
      (prompts, cmds, maxEntries, maxEntriesPerStream) =>
        run(prompts, cmds, { maxEntries, maxEntriesPerStream, copies: "count" }),
    ),
    { numRuns: 300 },
  );
});

test("many streams (bitmaps of widely shared blocks, > 32 streams): fast == reference", () => {
  const many: StreamRef[] = Array.from({ length: 90 }, (_, i) => stream(`p${i}`));
  const opArb = fc.record({
    s: fc.nat(many.length - 1),
    k: fc.constantFrom("store", "store", "store", "offload", "remove", "remove", "clear", "drop"),
    prompt: fc.nat(2),
    upto: fc.integer({ min: 1, max: 20 }),
    at: fc.nat(19),
    alt: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 50, maxLength: 400 }), (ops) => {
      const fast = createIndex({ ...SMALL_SYNC, copies: "count" });
      const ref = createIndex({ backend: "reference", copies: "count" });
      const prompts = [0, 1, 2].map((p) => Array.from({ length: 20 }, (_, i) => (i < 4 ? i : p * 50 + i)));
      // engine hash of (stream, prompt, block); alt = a second engine hash for the same block
      const h = (s: number, p: number, i: number, alt: boolean) =>
        hk(((s * 3 + p) * 32 + i) * 2 + (alt ? 1 : 0) + 1);
      for (const o of ops) {
        let ev: KvEvent;
        if (o.k === "store") {
          const hs = Array.from({ length: o.upto }, (_, i) => h(o.s, o.prompt, i, o.alt));
          ev = stored(hs, null, toks(prompts[o.prompt].slice(0, o.upto), BS), { blockSize: BS });
        } else if (o.k === "offload")
          ev = stored([h(o.s, o.prompt, o.at, o.alt)], null, [], { blockSize: BS, medium: "CPU" });
        else if (o.k === "remove") ev = removed([h(o.s, o.prompt, o.at, o.alt)], o.alt ? "CPU" : "GPU");
        else if (o.k === "clear") ev = cleared();
        else {
          fast.dropStream(many[o.s].streamId);
          ref.dropStream(many[o.s].streamId);
          continue;
        }
        const b = batch(ev);
        fast.applyBatch(many[o.s], b);
        ref.applyBatch(many[o.s], b);
      }
      const ns = { model: "m", lora: null, blockSize: BS };
      for (const p of prompts) {
        const t = toks(p, BS);
        assert.deepEqual(fast.match(ns, t), ref.match(ns, t));
      }
      assert.equal(fast.stats().entries, ref.stats().entries);
    }),
    { numRuns: 60 },
  );
});

test("past 2048 streams the claim vectors are re-laid out without bitmaps: fast == reference", () => {
  const fast = createIndex({ backend: "sync", initialCapacity: 16, pageBits: 6 });
  const ref = createIndex({ backend: "reference" });
  const ns = { model: "m", lora: null, blockSize: BS };
  const tokens = toks([1, 2, 3], BS);
  const run = (from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const st = stream(`q${i}`);
      const hs = [hk(i * 4 + 1), hk(i * 4 + 2), hk(i * 4 + 3)].slice(0, 1 + (i % 3));
      const evs: KvEvent[] = [stored(hs, null, tokens.slice(0, hs.length * BS), { blockSize: BS })];
      if (i % 7 === 0) evs.push(removed([hs[0]]));
      if (i % 5 === 0) evs.push(stored([hs[hs.length - 1]], null, [], { blockSize: BS, medium: "CPU" }));
      const b = batch(...evs);
      fast.applyBatch(st, b);
      ref.applyBatch(st, b);
    }
    assert.deepEqual(fast.match(ns, tokens), ref.match(ns, tokens));
  };
  run(0, 40); // bitmaps (class >= 4 vectors), one word
  run(40, 2100); // widths past the bitmap limit: vectors re-laid out without bitmaps
  for (let i = 0; i < 2100; i += 3) {
    fast.dropStream(`q${i}`);
    ref.dropStream(`q${i}`);
  }
  assert.deepEqual(fast.match(ns, tokens), ref.match(ns, tokens));
  assert.equal(fast.stats().entries, ref.stats().entries);
});
