import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { type Digest, extendDigests, rootDigest } from "../../../src/engine/block-hash.ts";
import { type CacheRequest, KvCache } from "../../../src/engine/kv-cache.ts";
import type { KvEvent } from "../../../src/protocol/types.ts";

const BS = 4;
const root = rootDigest("test");
const hex = (d: Digest) => Buffer.from(d, "latin1").toString("hex");

function mkCache(gpu: number, cpu = 0) {
  return new KvCache({ numGpuBlocks: gpu, numCpuBlocks: cpu, blockSize: BS, hashOf: (d) => `b${d}` });
}
function mkReq(tokens: number[], lora: string | null = null): CacheRequest {
  const r: CacheRequest = {
    tokens,
    digests: [],
    blocks: [],
    numCachedBlocks: 0,
    loraId: lora === null ? null : 1,
    loraName: lora,
  };
  extendDigests(r.digests, root, tokens, BS, lora ?? "");
  return r;
}
/** run a request to completion of its prompt, return its events, then free it */
function runPrompt(c: KvCache, r: CacheRequest): { hitBlocks: number; cpuBlocks: number; events: KvEvent[] } {
  const hit = c.lookup(r, Math.floor((r.tokens.length - 1) / BS));
  assert.ok(c.allocate(r, r.tokens.length, hit, r.tokens.length), "allocation failed");
  const events = c.drainEvents();
  c.free(r);
  return { hitBlocks: hit.gpuBlocks.length, cpuBlocks: hit.cpuBlocks, events };
}
const seq = (start: number, n: number) => Array.from({ length: n }, (_, i) => start + i);

test("chained hashes depend on the parent, the tokens, the LoRA and the seed", () => {
  const a = mkReq(seq(0, 8));
  const b = mkReq([...seq(0, 4), ...seq(100, 4)]);
  assert.equal(a.digests[0], b.digests[0]);
  assert.notEqual(a.digests[1], b.digests[1]);
  const l = mkReq(seq(0, 8), "sql");
  assert.notEqual(hex(l.digests[0]), hex(a.digests[0]));
  const other: Digest[] = [];
  extendDigests(other, rootDigest("other"), seq(0, 8), BS, "");
  assert.notEqual(other[0], a.digests[0]);
  const again: Digest[] = [];
  extendDigests(again, rootDigest("test"), seq(0, 8), BS, "");
  assert.deepEqual(again, a.digests);
});

test("a shared prefix hits; the last prompt token is always recomputed", () => {
  const c = mkCache(8);
  const first = runPrompt(c, mkReq(seq(0, 9)));
  assert.equal(first.hitBlocks, 0);
  assert.equal(first.events.length, 1);
  const st = first.events[0];
  assert.ok(st.type === "BlockStored");
  assert.equal(st.blockHashes.length, 2);
  assert.equal(st.parentBlockHash, null);
  assert.deepEqual(st.tokenIds, seq(0, 8));
  // same 8 tokens exactly: only 1 block may hit (the 8th token is recomputed)
  assert.equal(runPrompt(c, mkReq(seq(0, 8))).hitBlocks, 1);
  const r = runPrompt(c, mkReq([...seq(0, 8), 50, 51, 52, 53, 54]));
  assert.equal(r.hitBlocks, 2);
  const st2 = r.events[0];
  assert.ok(st2.type === "BlockStored");
  assert.equal(st2.parentBlockHash, mkReq(seq(0, 8)).digests.map((d) => `b${d}`)[1]);
});

test("a full cache evicts least-recently-used blocks first, request tails first", () => {
  const c = mkCache(5);
  const a = mkReq(seq(0, 8));
  const b = mkReq(seq(100, 8));
  runPrompt(c, a);
  runPrompt(c, b);
  // free queue: a's blocks (tail first), then b's
  assert.deepEqual(c.freeQueueDigests(), [a.digests[1], a.digests[0], b.digests[1], b.digests[0]]);
  // touching a makes b the LRU
  assert.equal(runPrompt(c, mkReq([...seq(0, 8), 9])).hitBlocks, 2);
  const r = runPrompt(c, mkReq(seq(200, 5)));
  const removed = r.events.filter((e) => e.type === "BlockRemoved");
  assert.deepEqual(
    removed.map((e) => (e.type === "BlockRemoved" ? e.blockHashes[0] : "")),
    [`b${b.digests[1]}`, `b${b.digests[0]}`],
  );
  assert.equal(c.stats().gpuEvictions, 2);
});

test("blocks in use are never evicted and allocation fails cleanly", () => {
  const c = mkCache(3);
  const a = mkReq(seq(0, 8));
  assert.ok(c.allocate(a, 8, c.lookup(a, 1), 8));
  const b = mkReq(seq(100, 8));
  assert.equal(c.allocate(b, 8, c.lookup(b, 1), 8), false);
  assert.equal(b.blocks.length, 0);
  assert.equal(c.freeBlocks, 1);
  assert.equal(c.reset(), false, "reset must fail while blocks are in use");
  c.free(a);
  assert.equal(c.reset(), true);
  assert.deepEqual(c.drainEvents().at(-1), { type: "AllBlocksCleared" });
  assert.equal(c.snapshot().length, 0);
});

test("duplicate copies of a hash: BlockRemoved only when the last copy goes", () => {
  const c = mkCache(6);
  const a = mkReq(seq(0, 9));
  const b = mkReq(seq(0, 9));
  assert.ok(c.allocate(a, 9, c.lookup(a, 2), 9));
  // b looked up before a registered anything? emulate concurrent compute: no hit
  assert.ok(c.allocate(b, 9, { gpuBlocks: [], cpuBlocks: 0 }, 9));
  c.drainEvents();
  c.free(a);
  c.free(b);
  // allocate everything: evicts both copies of both hashes; 2 removals, not 4
  const big = mkReq(seq(500, 24));
  assert.ok(c.allocate(big, 24, null, 0));
  const removed = c.drainEvents().filter((e) => e.type === "BlockRemoved");
  assert.equal(removed.length, 2);
});

test("per-copy removals (vLLM's behaviour): one BlockRemoved per evicted copy", () => {
  const c = new KvCache({
    numGpuBlocks: 6,
    numCpuBlocks: 0,
    blockSize: BS,
    hashOf: (d) => `b${d}`,
    removals: "per-copy",
  });
  const a = mkReq(seq(0, 9));
  const b = mkReq(seq(0, 9));
  assert.ok(c.allocate(a, 9, c.lookup(a, 2), 9));
  assert.ok(c.allocate(b, 9, { gpuBlocks: [], cpuBlocks: 0 }, 9));
  c.drainEvents();
  c.free(a);
  c.free(b);
  assert.ok(c.allocate(mkReq(seq(500, 24)), 24, null, 0));
  assert.equal(c.drainEvents().filter((e) => e.type === "BlockRemoved").length, 4);
  assert.equal(c.snapshot().length, 0);
});

test("CPU tier: write-through, loaded back on a GPU miss", () => {
  const c = mkCache(3, 4);
  const a = mkReq(seq(0, 9));
  const ev = runPrompt(c, a).events;
  assert.deepEqual(
    ev.map((e) => [e.type, e.type === "AllBlocksCleared" ? null : e.medium]),
    [
      ["BlockStored", "GPU"],
      ["BlockStored", "CPU"],
    ],
  );
  const cpuStored = ev[1];
  assert.ok(cpuStored.type === "BlockStored");
  assert.deepEqual(cpuStored.tokenIds, []);
  assert.equal(cpuStored.parentBlockHash, null);
  // b needs all 3 GPU blocks: a's hashes leave the GPU but stay on CPU
  runPrompt(c, mkReq(seq(100, 9)));
  const tiers = new Map(c.snapshot().map((s) => [s.digest, s.tiers.join(",")]));
  assert.equal(tiers.get(a.digests[0]), "CPU");
  assert.equal(tiers.get(a.digests[1]), "CPU");
  const r = runPrompt(c, mkReq([...seq(0, 9), 77]));
  assert.equal(r.hitBlocks, 0);
  assert.equal(r.cpuBlocks, 2);
  const gpuStored = r.events.find((e) => e.type === "BlockStored" && e.medium === "GPU");
  assert.ok(gpuStored?.type === "BlockStored");
  assert.deepEqual(gpuStored.blockHashes, [`b${a.digests[0]}`, `b${a.digests[1]}`]);
  const t2 = new Map(c.snapshot().map((s) => [s.digest, s.tiers.join(",")]));
  assert.equal(t2.get(a.digests[0]), "GPU,CPU");
});

test("CPU tier evicts its own LRU with BlockRemoved medium CPU", () => {
  const c = mkCache(3, 3);
  const a = mkReq(seq(0, 9));
  runPrompt(c, a);
  const ev = runPrompt(c, mkReq(seq(100, 9))).events;
  const cpuRemoved = ev.filter((e) => e.type === "BlockRemoved" && e.medium === "CPU");
  assert.equal(cpuRemoved.length, 1);
  assert.ok(cpuRemoved[0].type === "BlockRemoved");
  assert.deepEqual(cpuRemoved[0].blockHashes, [`b${a.digests[0]}`]);
  assert.equal(c.stats().cpuCachedHashes, 3);
  assert.equal(c.stats().cpuEvictions, 1);
});

test("property: random allocate/grow/free/reset keeps ref counts, free queue and events consistent", () => {
  const cmd = fc.oneof(
    fc.record({
      t: fc.constant("start" as const),
      prefix: fc.integer({ min: 0, max: 3 }),
      len: fc.integer({ min: 1, max: 14 }),
      lora: fc.boolean(),
    }),
    fc.record({ t: fc.constant("grow" as const), which: fc.nat(), n: fc.integer({ min: 1, max: 6 }) }),
    fc.record({ t: fc.constant("free" as const), which: fc.nat() }),
    fc.record({ t: fc.constant("reset" as const) }),
  );
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 10 }),
      fc.constantFrom(0, 3, 8),
      fc.array(cmd, { maxLength: 60 }),
      (gpu, cpu, cmds) => {
        const c = mkCache(gpu, cpu);
        const live: CacheRequest[] = [];
        const mirror = new Map<string, Set<string>>();
        const apply = () => {
          for (const ev of c.drainEvents()) {
            if (ev.type === "AllBlocksCleared") mirror.clear();
            else
              for (const h of ev.blockHashes) {
                const tier = ev.medium ?? "GPU";
                const s = mirror.get(h) ?? new Set<string>();
                if (ev.type === "BlockStored") s.add(tier);
                else s.delete(tier);
                if (s.size > 0) mirror.set(h, s);
                else mirror.delete(h);
              }
          }
        };
        let nextTok = 10_000;
        for (const k of cmds) {
          if (k.t === "start") {
            const tokens = [...seq(k.prefix * 100, 4 * k.prefix), ...seq(nextTok, k.len)];
            nextTok += k.len;
            const r = mkReq(tokens, k.lora ? "a" : null);
            const hit = c.lookup(r, Math.floor((tokens.length - 1) / BS));
            const hitTokens = (hit.gpuBlocks.length + hit.cpuBlocks) * BS;
            if (c.allocate(r, tokens.length, hit, tokens.length)) {
              assert.ok(hitTokens < tokens.length);
              live.push(r);
            } else assert.equal(r.blocks.length, 0);
          } else if (k.t === "grow" && live.length > 0) {
            const r = live[k.which % live.length];
            const before = r.tokens.length;
            for (let i = 0; i < k.n; i++) r.tokens.push(nextTok++);
            extendDigests(r.digests, root, r.tokens, BS, r.loraName ?? "");
            if (!c.allocate(r, r.tokens.length, null, r.tokens.length)) r.tokens.length = before;
            r.digests.length = Math.min(r.digests.length, Math.floor(r.tokens.length / BS));
          } else if (k.t === "free" && live.length > 0) {
            const [r] = live.splice(k.which % live.length, 1);
            c.free(r);
          } else if (k.t === "reset") {
            assert.equal(
              c.reset(),
              live.every((r) => r.blocks.length === 0),
            );
          }
          apply();
          // invariants
          const holders = new Map<number, number>();
          for (const r of live) for (const b of r.blocks) holders.set(b.id, (holders.get(b.id) ?? 0) + 1);
          const st = c.stats();
          assert.equal(st.gpuFree + holders.size, gpu, "every block is either free or held");
          assert.ok(st.cpuCachedHashes <= cpu);
          const truth = new Map(c.snapshot().map((s) => [`b${s.digest}`, s.tiers.slice().sort().join(",")]));
          assert.deepEqual(
            new Map([...mirror].map(([h, t]) => [h, [...t].sort().join(",")])),
            truth,
            "events rebuild the cache exactly",
          );
        }
      },
    ),
    { numRuns: 300 },
  );
});
