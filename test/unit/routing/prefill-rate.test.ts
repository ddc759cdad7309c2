/**
 * The learned prefill rate of LoadTracker and kv-aware's drained queue: a stream's backlog is
 * drained at the rate its own first bytes revealed, so a pod deep into a long prefill stops
 * looking as busy as when the prefill was sent.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { estimateTtft, KV_AWARE_DEFAULTS, LoadTracker } from "../../../src/routing/index.ts";

test("the rate is learned from time to first byte and drains the backlog like a FIFO queue", () => {
  let now = 0;
  const l = new LoadTracker(null, { now: () => now, alpha: 0.5 });
  // no rate yet: the backlog is every in-prefill token, and the view has no drained figure
  const a = l.begin("p", 1000);
  assert.equal(l.drainedPrefillTokens("p"), 1000);
  assert.equal(l.load("p", "p").drainedPrefillTokens, undefined);
  now = 100;
  a.prefillDone(); // 1000 tokens, nothing ahead, 100 ms: 10 tokens/ms
  assert.equal(l.prefillRate("p"), 10);
  // two requests 50 ms apart: 1000 + 1000 - 500 drained = 1500 at t = 150, then 10/ms
  now = 100;
  const b = l.begin("p", 1000);
  now = 150;
  const c = l.begin("p", 1000);
  assert.equal(l.drainedPrefillTokens("p"), 1500);
  now = 250;
  assert.equal(l.drainedPrefillTokens("p"), 500);
  assert.equal(l.load("p", "p").drainedPrefillTokens, 500);
  assert.equal(l.load("p", "p").inflightPrefillTokens, 2000);
  now = 400;
  assert.equal(l.drainedPrefillTokens("p"), 0);
  // b took 200 ms for its own 1000 with nothing ahead: 5 tokens/ms; averaged with 10 at alpha 0.5
  now = 300;
  b.prefillDone();
  assert.equal(l.prefillRate("p"), 7.5);
  c.done();
  b.done();
  a.done();
  assert.equal(l.snapshot().length, 0);
  // the rate outlives the stream's idle spell
  assert.equal(l.prefillRate("p"), 7.5);
});

test("kv-aware counts the drained backlog when it is known, the full one otherwise", () => {
  const base = {
    inflightRequests: 2,
    inflightPrefillRequests: 2,
    inflightPrefillTokens: 2000,
    engineWaiting: null,
    engineRunning: null,
    kvUsage: null,
  };
  const o = { ...KV_AWARE_DEFAULTS };
  assert.equal(o.drainQueue, true);
  assert.equal(estimateTtft(100, 0, base, o).queued, 2000);
  assert.equal(estimateTtft(100, 0, { ...base, drainedPrefillTokens: 300 }, o).queued, 300);
  assert.equal(
    estimateTtft(100, 0, { ...base, drainedPrefillTokens: 300 }, { ...o, drainQueue: false }).queued,
    2000,
  );
});
