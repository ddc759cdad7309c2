/**
 * The evaluator's workloads: Mooncake JSONL errors name their line, arrivals rescale as stated,
 * block scaling keeps ids, and the generators write the shapes they claim.
 */
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  loadMooncake,
  MULTI_TURN_DEFAULTS,
  meanRate,
  multiTurnWorkload,
  parseMooncake,
  SHARED_PREFIX_DEFAULTS,
  scaleBlocks,
  sharedPrefixWorkload,
  WorkloadError,
  withArrivals,
} from "../../../src/eval/workload.ts";

const line = (o: unknown) => JSON.stringify(o);
const good = { timestamp: 5, input_length: 600, output_length: 3, hash_ids: [0, 1] };

test("a malformed line is a WorkloadError naming the source and the line number", () => {
  const cases: Array<[string, RegExp]> = [
    [`${line(good)}\n{"timestamp": 1,`, /^t\.jsonl:2: not JSON$/],
    [`${line(good)}\n\n${line({ ...good, hash_ids: [1, -2] })}`, /^t\.jsonl:3: expected/],
    [line({ ...good, input_length: 0 }), /^t\.jsonl:1: expected/],
    [line({ ...good, input_length: 1.5 }), /^t\.jsonl:1: expected/],
    [line({ ...good, output_length: -1 }), /^t\.jsonl:1: expected/],
    [line({ ...good, timestamp: "0" }), /^t\.jsonl:1: expected/],
    [line({ ...good, hash_ids: "0,1" }), /^t\.jsonl:1: expected/],
    [`${line(good)}\n[1, 2]`, /^t\.jsonl:2: expected/],
    [`${line(good)}\nnull`, /^t\.jsonl:2: expected/],
  ];
  for (const [text, re] of cases) {
    assert.throws(
      () => parseMooncake(text, "t.jsonl"),
      (e: unknown) => e instanceof WorkloadError && re.test(e.message),
      text,
    );
  }
});

test("blank lines are skipped, requests come back sorted by arrival (stable), a file loads with a limit", () => {
  const a = { ...good, timestamp: 10, hash_ids: [1] };
  const b = { ...good, timestamp: 0, hash_ids: [2] };
  const c = { ...good, timestamp: 10, hash_ids: [3] };
  const text = `\n${line(a)}\r\n   \n${line(b)}\n${line(c)}\n`;
  assert.deepEqual(
    parseMooncake(text).map((r) => r.hash_ids[0]),
    [2, 1, 3],
  );
  const dir = mkdtempSync(join(tmpdir(), "kvsync-eval-"));
  const f = join(dir, "trace.jsonl");
  writeFileSync(f, text);
  assert.equal(loadMooncake(f).length, 3);
  assert.equal(loadMooncake(f, 2).length, 2);
  writeFileSync(f, `${line(a)}\noops\n`);
  assert.throws(
    () => loadMooncake(f),
    (e: unknown) => e instanceof WorkloadError && e.message === `${f}:2: not JSON`,
  );
});

test("arrivals: --time-scale rebases and multiplies, --rate replaces them with a seeded Poisson process", () => {
  const reqs = [100, 300, 700].map((t) => ({ ...good, timestamp: t }));
  assert.deepEqual(
    withArrivals(reqs, { timeScale: 0.5 }).map((r) => r.timestamp),
    [0, 100, 300],
  );
  assert.equal(withArrivals(reqs, {})[2].timestamp, 700);
  const many = Array.from({ length: 4000 }, () => good);
  const p = withArrivals(many, { rate: 20, seed: 9 });
  assert.equal(p[0].timestamp, 0);
  assert.ok(p.every((r, i) => i === 0 || r.timestamp >= p[i - 1].timestamp));
  assert.ok(Math.abs(meanRate(p) - 20) < 1.5, `rate ${meanRate(p)}`);
  assert.deepEqual(
    withArrivals(many, { rate: 20, seed: 9 }).map((r) => r.timestamp),
    p.map((r) => r.timestamp),
  );
});

test("scaleBlocks keeps every block id and the block count, scales the partial block and the output", () => {
  const [r] = scaleBlocks(
    [{ timestamp: 0, input_length: 2 * 512 + 256, output_length: 512, hash_ids: [4, 5, 6] }],
    512,
    16,
  );
  assert.deepEqual(r.hash_ids, [4, 5, 6]);
  assert.equal(r.input_length, 2 * 16 + 8);
  assert.equal(r.output_length, 16);
  const [tiny] = scaleBlocks([{ timestamp: 0, input_length: 1, output_length: 1, hash_ids: [1] }], 512, 16);
  assert.equal(tiny.input_length, 1);
  assert.equal(tiny.output_length, 1);
});

test("shared-prefix generator: every request starts with one group's prefix; popular groups dominate", () => {
  const o = { ...SHARED_PREFIX_DEFAULTS, seed: 4, requests: 3000, blockTokens: 16 };
  const w = sharedPrefixWorkload(o);
  assert.equal(w.length, 3000);
  const perGroup = new Array(o.groups).fill(0);
  const suffixIds = new Set<number>();
  for (const r of w) {
    const g = Math.floor(r.hash_ids[0] / o.prefixBlocks);
    assert.deepEqual(
      r.hash_ids.slice(0, o.prefixBlocks),
      Array.from({ length: o.prefixBlocks }, (_, k) => g * o.prefixBlocks + k),
    );
    const suffix = r.hash_ids.length - o.prefixBlocks;
    assert.ok(suffix >= o.minSuffixBlocks && suffix <= o.maxSuffixBlocks);
    for (const id of r.hash_ids.slice(o.prefixBlocks)) {
      assert.ok(!suffixIds.has(id), "suffix blocks are unique to their request");
      suffixIds.add(id);
    }
    // the last block is partial: ceil(input / blockTokens) = blocks
    assert.equal(Math.ceil(r.input_length / 16), r.hash_ids.length);
    assert.ok(r.output_length >= o.minOutput && r.output_length <= o.maxOutput);
    perGroup[g]++;
  }
  // Zipf-like: group 0 weighs 1, group 63 weighs 1/64
  assert.ok(perGroup[0] > 5 * perGroup[o.groups - 1], `${perGroup[0]} vs ${perGroup[o.groups - 1]}`);
  assert.ok(Math.abs(meanRate(w) - o.rate) < 0.5, `rate ${meanRate(w)}`);
  assert.deepEqual(sharedPrefixWorkload(o), w);
});

test("multi-turn generator: each turn resends its conversation's previous turn and grows it", () => {
  const o = { ...MULTI_TURN_DEFAULTS, seed: 5, requests: 2000, blockTokens: 16 };
  const w = multiTurnWorkload(o);
  assert.equal(w.length, 2000);
  const system = Array.from({ length: o.systemBlocks }, (_, k) => k);
  // a turn's predecessor is the request whose full blocks (all but the partial last one) it
  // starts with: indexed by that last full block (never a system block, which every turn shares)
  const byLastFull = new Map<number, number[]>();
  let continued = 0;
  for (const r of w) {
    assert.deepEqual(r.hash_ids.slice(0, o.systemBlocks), system);
    assert.equal(Math.ceil(r.input_length / 16), r.hash_ids.length);
    for (let k = r.hash_ids.length - 2; k >= o.systemBlocks; k--) {
      const prev = byLastFull.get(r.hash_ids[k]);
      if (prev === undefined) continue;
      // the previous turn's full blocks are this turn's prefix, and this turn adds blocks
      assert.deepEqual(r.hash_ids.slice(0, prev.length), prev);
      assert.ok(r.hash_ids.length > prev.length + 1);
      continued++;
      break;
    }
    const full = r.hash_ids.slice(0, -1);
    if (full.length > o.systemBlocks) byLastFull.set(full[full.length - 1], full);
  }
  // most requests are later turns (3..12 turns per conversation)
  assert.ok(continued > 0.6 * w.length, `${continued} continued turns`);
  assert.deepEqual(multiTurnWorkload(o), w);
});
