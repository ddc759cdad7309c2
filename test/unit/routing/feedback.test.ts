import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import fc from "fast-check";
import pino from "pino";
import type { NamespaceRef, StreamMatch } from "../../../src/index/types.ts";
import { FEEDBACK_DEFAULTS, PredictionFeedback } from "../../../src/routing/feedback.ts";
import { type Candidate, KvAwarePolicy, LoadTracker } from "../../../src/routing/index.ts";
import { silentLogger } from "../../../src/util/log.ts";

const stream = (pod: string, rank: number | null = null) => ({
  streamId: rank === null ? pod : `${pod}#${rank}`,
  pod,
  rank,
});

function capture(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: pino({ level: "info" }, sink), lines };
}

describe("prediction feedback", () => {
  test("returns signed errors and keeps a per-pod mean |error| for the error-ratio gauge", () => {
    const f = new PredictionFeedback(silentLogger());
    assert.equal(f.observe(stream("a"), 64, 48, 100), 16);
    assert.equal(f.observe(stream("a"), 0, 48, 100), -48);
    const e = f.errors().find((x) => x.pod === "a")!;
    assert.equal(e.samples, 2);
    assert.ok(e.meanRelError > 0.16 && e.meanRelError < 0.48);
  });

  test("under-prediction never costs trust; over-prediction after the warm-up does", () => {
    const { log, lines } = capture();
    // a clock that stands still: trust moves only with the samples here (aging: the test below)
    const f = new PredictionFeedback(log, { now: () => 0 });
    // the engine reused more than the index knew (blocks stored by concurrent requests): normal
    for (let i = 0; i < 50; i++) f.observe(stream("healthy"), 64, 320, 400);
    assert.equal(f.trust("healthy"), 1);
    assert.equal(f.stream("healthy")?.suspect, false);
    // the warm-up's samples do not count, however wrong
    for (let i = 0; i < FEEDBACK_DEFAULTS.warmupSamples; i++) f.observe(stream("sick"), 320, 0, 400);
    assert.equal(f.trust("sick"), 1);
    for (let i = 0; i < 3; i++) f.observe(stream("sick"), 320, 0, 400);
    const t3 = f.stream("sick")!.trust;
    assert.ok(t3 > FEEDBACK_DEFAULTS.suspectBelow && t3 < 1, "three misses do not make a suspect");
    assert.equal(f.trust("sick"), 1, "not suspect: its claims count fully");
    f.observe(stream("sick"), 320, 0, 400);
    assert.ok(f.stream("sick")!.trust < FEEDBACK_DEFAULTS.suspectBelow);
    assert.equal(f.stream("sick")?.suspect, true);
    assert.equal(f.trust("sick"), f.stream("sick")!.trust, "suspect: its claims count times its trust");
    assert.deepEqual(
      lines.filter((l) => l.level === 40).map((l) => [l.event, l.stream]),
      [["routing.stream_suspect", "sick"]],
    );
    assert.equal(f.warnings("sick")[0]?.code, "prediction_suspect");
    assert.deepEqual(f.warnings("healthy"), []);
  });

  test("a suspect stream asks for one rebuild per interval (a refused one again after 1 s) and recovers as predictions agree", () => {
    const asked: string[] = [];
    let accept = false;
    const changed: string[] = [];
    const { log, lines } = capture();
    const f = new PredictionFeedback(
      log,
      { warmupSamples: 0 },
      {
        rebuild: (id) => {
          asked.push(id);
          return accept;
        },
        changed: (id) => changed.push(id),
      },
    );
    const s = stream("p", 1);
    for (let i = 0; i < 10; i++) f.observe(s, 160, 16, 200);
    assert.equal(f.stream("p#1")?.suspect, true);
    assert.deepEqual(asked, ["p#1"], "refused once; not asked again within a second");
    assert.deepEqual(changed, ["p#1"]);
    // agreement brings trust back; at recoverAbove the stream counts fully again
    let n = 0;
    while (f.stream("p#1")?.suspect && n++ < 100) f.observe(s, 160, 160, 200);
    assert.ok(n < 20, `recovered after ${n} agreeing samples`);
    assert.ok(f.stream("p#1")!.trust >= FEEDBACK_DEFAULTS.recoverAbove);
    assert.equal(f.trust("p#1"), 1);
    assert.deepEqual(changed, ["p#1", "p#1"]);
    assert.ok(lines.some((l) => l.event === "routing.stream_trusted" && l.stream === "p#1"));
    assert.equal(f.snapshot()[0]?.rank, 1);
    accept = true;
    f.forget("p");
    assert.equal(f.stream("p#1"), null);
    assert.equal(f.trust("p#1"), 1);
  });

  test("evidence ages: a suspect stream's trust climbs toward 1 with the half-life, then fresh samples judge it again", () => {
    let now = 1_000;
    const changed: string[] = [];
    const { log, lines } = capture();
    const f = new PredictionFeedback(
      log,
      { warmupSamples: 0, halfLifeMs: 60_000, now: () => now },
      { changed: (id) => changed.push(id) },
    );
    const s = stream("lossy");
    for (let i = 0; i < 10; i++) f.observe(s, 160, 0, 200);
    const t0 = f.stream("lossy")!.trust;
    assert.ok(t0 < 0.2 && f.stream("lossy")!.suspect, `trust ${t0}`);
    assert.equal(f.trust("lossy"), t0, "no time passed: nothing aged");
    // one half-life without samples: the distance from 1 halves, still suspect
    now += 60_000;
    const t1 = f.trust("lossy");
    assert.ok(Math.abs(1 - t1 - (1 - t0) / 2) < 1e-9, `after one half-life ${t1} (from ${t0})`);
    assert.equal(f.stream("lossy")!.suspect, true);
    // reading twice at the same time does not age twice
    assert.equal(f.trust("lossy"), t1);
    // past recoverAbove by age alone: it counts fully again, one info line says why
    now += 3 * 60_000;
    assert.equal(f.trust("lossy"), 1);
    const st = f.stream("lossy")!;
    assert.equal(st.suspect, false);
    assert.ok(st.trust >= FEEDBACK_DEFAULTS.recoverAbove && st.trust < 1);
    assert.deepEqual(changed, ["lossy", "lossy"]);
    const trusted = lines.filter((l) => l.event === "routing.stream_trusted");
    assert.deepEqual(
      trusted.map((l) => [l.stream, l.why]),
      [["lossy", "aged"]],
    );
    // still wrong: the next samples make it suspect again within a few requests
    let n = 0;
    while (!f.stream("lossy")!.suspect && n++ < 100) f.observe(s, 160, 0, 200);
    assert.ok(n >= 1 && n <= 5, `suspect again after ${n} samples`);
    assert.deepEqual(changed, ["lossy", "lossy", "lossy"]);
  });

  test("a half-life of 0 keeps trust where the samples left it", () => {
    let now = 0;
    const f = new PredictionFeedback(silentLogger(), { warmupSamples: 0, halfLifeMs: 0, now: () => now });
    for (let i = 0; i < 10; i++) f.observe(stream("x"), 160, 0, 200);
    const t = f.trust("x");
    now += 1e9;
    assert.equal(f.trust("x"), t);
    assert.equal(f.stream("x")!.suspect, true);
  });

  test("trust stays in [0, 1] and a stream whose claims always hold keeps trust 1 (fast-check)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(4096), fc.nat(4096), fc.boolean()), { maxLength: 200 }),
        (samples) => {
          const f = new PredictionFeedback(silentLogger());
          for (const [p, a, good] of samples) {
            f.observe(stream("x"), p, a, 4096);
            if (good) f.observe(stream("y"), p, p + a, 4096);
            const t = f.stream("x")?.trust ?? 1;
            if (!(t >= 0 && t <= 1) || !(f.trust("x") >= t)) return false;
          }
          return (f.stream("y")?.trust ?? 1) === 1;
        },
      ),
      { seed: 17, numRuns: 200 },
    );
  });

  test("bad options are refused", () => {
    assert.throws(() => new PredictionFeedback(silentLogger(), { alpha: 0 }), /alpha/);
    assert.throws(
      () => new PredictionFeedback(silentLogger(), { suspectBelow: 0.9, recoverAbove: 0.5 }),
      /thresholds/,
    );
  });
});

describe("kv-aware weighs a stream's claims by its trust", () => {
  const NS: NamespaceRef = { model: "m", lora: null, blockSize: 4 };
  const cand = (pod: string): Candidate => ({ streamId: pod, pod, rank: null, http: "http://x", live: true });
  // both streams claim the whole 40-token prompt (9 reusable blocks)
  const index = {
    match: (): StreamMatch[] => [
      { streamId: "a", pod: "a", rank: null, matchedBlocks: 10, tiers: { GPU: 10, CPU: 0, STORAGE: 0 } },
      { streamId: "b", pod: "b", rank: null, matchedBlocks: 10, tiers: { GPU: 10, CPU: 0, STORAGE: 0 } },
    ],
  };
  const tokenIds = Array.from({ length: 40 }, (_, i) => i);

  test("equal claims tie; a distrusted stream's claim counts times its trust, shown per candidate", () => {
    const trust = new Map<string, number>();
    const p = new KvAwarePolicy(index, new LoadTracker(), {}, { trust: (id) => trust.get(id) ?? 1 });
    const picks = new Set<string>();
    for (let i = 0; i < 4; i++)
      picks.add(p.route({ ns: NS, tokenIds, candidates: [cand("a"), cand("b")] }).ranked[0]!.candidate.pod);
    assert.deepEqual([...picks].sort(), ["a", "b"], "a tie rotates");
    trust.set("a", 0.25);
    for (let i = 0; i < 4; i++) {
      const d = p.route({ ns: NS, tokenIds, candidates: [cand("a"), cand("b")] });
      assert.equal(d.ranked[0]!.candidate.pod, "b");
      const a = d.ranked.find((s) => s.candidate.pod === "a")!;
      assert.equal(a.trust, 0.25);
      assert.equal(a.matchedTokens, 36, "the claim itself is shown as the index holds it");
      assert.equal(a.savedTokens, 9);
      assert.equal(d.ranked[0]!.trust, 1);
    }
  });
});
