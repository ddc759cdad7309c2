/**
 * The evaluator's simulator pinned on tiny traces whose outcome is computed by hand: hit counts,
 * the infinite-cache bound, TTFT of a queue, LRU eviction order, a decode run cut short by an
 * arrival, and the event lag seen by kv-aware through the real index.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  FLEET_DEFAULTS,
  type FleetOptions,
  infiniteCacheHitRate,
  simulate,
  simulateDetailed,
} from "../../../src/eval/simulator.ts";
import type { TraceRequest } from "../../../src/eval/workload.ts";

/** 4-token blocks, 1 ms per step + 1 ms per prefill token, free decode: easy to add up. */
const TINY: FleetOptions = {
  ...FLEET_DEFAULTS,
  pods: 1,
  cacheBlocks: 100,
  blockTokens: 4,
  eventLagMs: 0,
  maxRunning: 8,
  tokenBudget: 100,
  stepMs: 1,
  prefillMsPerToken: 1,
  decodeMsPerSeq: 0,
};

const req = (timestamp: number, input: number, ids: number[], output = 1): TraceRequest => ({
  timestamp,
  input_length: input,
  output_length: output,
  hash_ids: ids,
});

test("two requests queued on one pod: the second waits for the first's prefill step", () => {
  // budget 10: each 10-token prompt fills a step alone; step = 1 + 10 ms
  const f = { ...TINY, tokenBudget: 10 };
  const { result, requests } = simulateDetailed(
    [req(0, 10, [1, 2, 3]), req(0, 10, [4, 5, 6])],
    "round-robin",
    f,
  );
  assert.deepEqual(
    requests.map((r) => r.firstTokenAt - r.arrival),
    [11, 22],
  );
  assert.equal(result.ttftP50Ms, 11);
  assert.equal(result.ttftP90Ms, 22);
  assert.equal(result.hitRate, 0);
});

test("hit counts: leading cached blocks up to the last full block before the last token; the bound", () => {
  const trace = [
    req(0, 9, [1, 2, 3]), // full blocks 1, 2 get cached; nothing to hit
    req(100, 9, [1, 2, 4]), // hits 1, 2: 1 token left to prefill
    req(200, 8, [1, 2]), // 8 tokens: the last token is computed, so only block 1 can be reused
  ];
  const { result, requests } = simulateDetailed(trace, "round-robin", TINY);
  assert.deepEqual(
    requests.map((r) => r.hitBlocks),
    [0, 2, 1],
  );
  assert.equal(result.hitRate, 3 / 8);
  assert.deepEqual(
    requests.map((r) => r.firstTokenAt - r.arrival),
    [1 + 9, 1 + 1, 1 + 4],
  );
  assert.equal(infiniteCacheHitRate(trace, 4), 3 / 8);
  // on two pods round-robin sends the second request to the empty pod: the bound stays, hits drop
  const rr = simulate(trace, "round-robin", { ...TINY, pods: 2 });
  assert.equal(rr.hitRate, 1 / 8);
  assert.deepEqual(rr.requestsPerPod, [2, 1]);
  assert.equal(rr.maxMeanLoad, 2 / 1.5);
});

test("kv-aware reads the real index: with no lag it follows the cache, with a long lag it cannot", () => {
  const trace = [req(0, 9, [1, 2, 3]), req(100, 9, [1, 2, 4]), req(200, 8, [1, 2])];
  const f = { ...TINY, pods: 2 };
  const fresh = simulate(trace, "kv-aware", f);
  assert.equal(fresh.hitRate, 3 / 8);
  assert.deepEqual(fresh.requestsPerPod, [3, 0]);
  assert.equal(fresh.predictedHitRate, fresh.hitRate);
  assert.equal(fresh.eventsApplied, 1); // one BlockStored of blocks 1, 2
  // events 1 s late: at 100 ms the index is still empty, the tie rotates to the other pod
  const stale = simulate(trace, "kv-aware", { ...f, eventLagMs: 1000 });
  assert.equal(stale.predictedHitRate, 0);
  assert.equal(stale.hitRate, 1 / 8);
  assert.deepEqual(stale.requestsPerPod, [2, 1]);
});

test("LRU eviction: a finished request's last block goes first, and the index hears of it", () => {
  // 3 blocks of cache; each request holds 2
  const f = { ...TINY, cacheBlocks: 3 };
  const trace = [req(0, 8, [1, 2]), req(100, 8, [3, 4]), req(200, 9, [1, 2, 5])];
  const { result, requests, index } = simulateDetailed(trace, "kv-aware", f);
  // request 2 needs room for 2 blocks: block 2 (freed before block 1) is evicted, block 1 stays;
  // request 3 hits block 1 and needs 2 more blocks (its own 2 and its partial last): 4 and 3 go
  assert.deepEqual(
    requests.map((r) => r.hitBlocks),
    [0, 0, 1],
  );
  assert.equal(result.evictions, 3);
  assert.equal(result.predictedHitRate, result.hitRate);
  // the index applied the BlockRemoved events: it holds what the engine holds, blocks 1 and 2
  assert.equal(index.streamBlocks("pod-0").length, 2);
});

test("one free queue: a cached block at its head is evicted while empty blocks wait behind it, as in the engine", () => {
  // 4 blocks. A caches blocks 1 and 2 (queue: empty, empty, 2, 1). B (5 tokens, 8 out) takes 3
  // blocks: the 2 empty ones and 2; it caches 3, its partial and output blocks go back empty
  // before it (queue: 1, empty, empty, 3). C takes the head, 1, though 2 empty blocks follow:
  // D, A's prefix again, misses. A model that used empty blocks first kept 1 and gave D a hit.
  const f = { ...TINY, cacheBlocks: 4 };
  const trace = [req(0, 8, [1, 2]), req(100, 5, [3, 4], 8), req(200, 8, [5, 6]), req(300, 8, [1, 9])];
  const { result, requests } = simulateDetailed(trace, "round-robin", f);
  assert.deepEqual(
    requests.map((r) => r.hitBlocks),
    [0, 0, 0, 0],
  );
  // 2 (by B), 1 (by C), 3 (by D)
  assert.equal(result.evictions, 3);
});

test("a run of decode steps is cut short by an arrival after the step in progress", () => {
  // decode costs 1 ms per sequence: a decode step is 2 ms
  const f = { ...TINY, decodeMsPerSeq: 1 };
  const trace = [req(0, 4, [1], 100), req(50.5, 4, [2], 1)];
  const { requests } = simulateDetailed(trace, "round-robin", f);
  const [a, b] = requests;
  // a: prefill step 1 + 4 = 5 ms; decode steps of 2 ms from 5; the step in progress at 50.5 ends at 51
  assert.equal(a.firstTokenAt, 5);
  // b joins the next step: 1 + 4 (prefill) + 1 (a decodes) = 6 ms
  assert.equal(b.firstTokenAt, 57);
  // a: 1 token at 5, 23 by 51, 1 at 57, then 75 more decode steps of 2 ms
  assert.equal(a.finishedAt, 57 + 75 * 2);
});

test("token budget and max running: chunked prefill and a FIFO wait for a sequence slot", () => {
  // budget 6: a 10-token prompt takes two steps; max 1 running: the second waits for the first to finish
  const f = { ...TINY, tokenBudget: 6, maxRunning: 1 };
  const { requests } = simulateDetailed([req(0, 10, [1, 2, 3], 2), req(0, 4, [9], 1)], "round-robin", f);
  // a: 1 + 6, then 1 + 4 -> first token at 12; one decode step (1 ms) -> done at 13; b: 1 + 4 -> 18
  assert.equal(requests[0].firstTokenAt, 12);
  assert.equal(requests[0].finishedAt, 13);
  assert.equal(requests[1].firstTokenAt, 18);
});

test("a request larger than a pod's cache is rejected, not stuck", () => {
  const r = simulate([req(0, 40, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])], "least-request", {
    ...TINY,
    cacheBlocks: 4,
  });
  assert.equal(r.rejected, 1);
  assert.equal(r.requests, 1);
});

test("the oracle sees caches at once and queues exactly", () => {
  const f = { ...TINY, pods: 2, eventLagMs: 10_000 };
  const trace = [req(0, 9, [1, 2, 3]), req(100, 9, [1, 2, 4]), req(200, 8, [1, 2])];
  const o = simulate(trace, "oracle", f);
  assert.equal(o.hitRate, 3 / 8);
  // a burst: the oracle spreads equal cold prompts over both pods
  const burst = simulate([req(0, 40, [11, 12]), req(0, 40, [13, 14])], "oracle", { ...f, cacheBlocks: 100 });
  assert.deepEqual(burst.requestsPerPod, [1, 1]);
});
