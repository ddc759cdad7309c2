import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { NamespaceRef, StreamMatch, TierCounts } from "../../../src/index/types.ts";
import { parseEngineMetrics } from "../../../src/routing/engine-metrics.ts";
import {
  type Candidate,
  createPolicy,
  estimateTtft,
  KV_AWARE_DEFAULTS,
  KvAwarePolicy,
  LoadTracker,
  PrefixApproxPolicy,
  type RouteRequest,
  reusableBlocks,
  savedTokens,
} from "../../../src/routing/index.ts";

const BS = 4;
const NS: NamespaceRef = { model: "m", lora: null, blockSize: BS };

/** Brute-force reference index: each stream holds a set of block prefixes (as strings), per tier. */
class FakeIndex {
  readonly held = new Map<string, Map<string, Set<keyof TierCounts>>>();
  store(streamId: string, tokens: number[], tier: keyof TierCounts = "GPU"): void {
    let m = this.held.get(streamId);
    if (m === undefined) {
      m = new Map();
      this.held.set(streamId, m);
    }
    for (let b = 1; b * BS <= tokens.length; b++) {
      const key = tokens.slice(0, b * BS).join(",");
      const tiers = m.get(key) ?? new Set();
      tiers.add(tier);
      m.set(key, tiers);
    }
  }
  match(_ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[] {
    const t = Array.from(tokenIds);
    const out: StreamMatch[] = [];
    for (const [streamId, m] of this.held) {
      const tiers: TierCounts = { GPU: 0, CPU: 0, STORAGE: 0 };
      let matched = 0;
      const lead = { GPU: true, CPU: true, STORAGE: true };
      for (let b = 1; b * BS <= t.length; b++) {
        const have = m.get(t.slice(0, b * BS).join(","));
        if (have === undefined) break;
        matched = b;
        for (const k of ["GPU", "CPU", "STORAGE"] as const) {
          if (lead[k] && have.has(k)) tiers[k] = b;
          else lead[k] = false;
        }
      }
      if (matched > 0) {
        const [pod, rank] = streamId.split("#");
        out.push({
          streamId,
          pod: pod!,
          rank: rank === undefined ? null : Number(rank),
          matchedBlocks: matched,
          tiers,
        });
      }
    }
    return out;
  }
}

function cands(n: number, live = true): Candidate[] {
  return Array.from({ length: n }, (_, i) => ({
    streamId: `pod-${i}`,
    pod: `pod-${i}`,
    rank: null,
    http: `http://127.0.0.1:${9000 + i}`,
    live,
  }));
}

const seq = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe("kv-aware", () => {
  test("a request whose prefix one pod holds goes to that pod", () => {
    const idx = new FakeIndex();
    const prefix = seq(100, 40);
    idx.store("pod-2", prefix);
    const p = new KvAwarePolicy(idx, new LoadTracker());
    const req: RouteRequest = { ns: NS, tokenIds: [...prefix, 1, 2, 3], candidates: cands(4) };
    const d = p.route(req);
    assert.equal(d.ranked[0]!.candidate.pod, "pod-2");
    assert.equal(d.ranked[0]!.matchedBlocks, 10);
    assert.equal(d.ranked[0]!.matchedTokens, 40);
    assert.equal(d.ranked.length, 4);
  });

  test("a stream that is not live does not attract traffic with its (stale) cache", () => {
    const idx = new FakeIndex();
    const prefix = seq(1, 400);
    idx.store("pod-1", prefix);
    const loads = new LoadTracker();
    const p = new KvAwarePolicy(idx, loads);
    const c = cands(3);
    c[1]!.live = false;
    // pod-1 runs one request; its stale cache must not outweigh that
    const t = loads.begin("pod-1", 0);
    t.prefillDone();
    const d = p.route({ ns: NS, tokenIds: [...prefix, 7], candidates: c });
    const stale = d.ranked.find((s) => s.candidate.pod === "pod-1")!;
    assert.equal(stale.matchedBlocks, 0);
    assert.equal(stale.savedTokens, 0);
    assert.equal(d.ranked[2]!.candidate.pod, "pod-1");
    // once live again, its cache counts and wins
    c[1]!.live = true;
    const d2 = p.route({ ns: NS, tokenIds: [...prefix, 7], candidates: c });
    assert.equal(d2.ranked[0]!.candidate.pod, "pod-1");
    assert.equal(d2.ranked[0]!.matchedTokens, 400);
    t.done();
  });

  test("a hot prefix every prompt shares still spreads concurrent load", () => {
    const idx = new FakeIndex();
    const hot = seq(1, 32); // every prompt starts with it; pod-0 holds it
    idx.store("pod-0", hot);
    const loads = new LoadTracker();
    const p = new KvAwarePolicy(idx, loads);
    const counts = new Map<string, number>();
    const tickets = [];
    for (let r = 0; r < 40; r++) {
      const tokens = [...hot, ...seq(10_000 + r * 1000, 200)];
      const req: RouteRequest = { ns: NS, tokenIds: tokens, candidates: cands(4) };
      const d = p.route(req);
      const top = d.ranked[0]!;
      counts.set(top.candidate.pod, (counts.get(top.candidate.pod) ?? 0) + 1);
      tickets.push(loads.begin(top.candidate.streamId, tokens.length - top.savedTokens));
      idx.store(top.candidate.streamId, tokens); // the engine now holds it too
    }
    assert.equal(counts.size, 4, `all pods used: ${JSON.stringify([...counts])}`);
    for (const [pod, n] of counts) assert.ok(n >= 8 && n <= 12, `${pod} got ${n} of 40`);
    for (const t of tickets) t.done();
    assert.equal(loads.totalInflight(), 0);
  });

  test("after the prefill is done, running requests still count, so decode load spreads too", () => {
    const idx = new FakeIndex();
    const hot = seq(1, 32);
    idx.store("pod-0", hot);
    idx.store("pod-1", hot);
    const loads = new LoadTracker();
    const p = new KvAwarePolicy(idx, loads);
    const counts = new Map<string, number>();
    for (let r = 0; r < 20; r++) {
      const tokens = [...hot, ...seq(50_000 + r * 100, 40)];
      const top = p.route({ ns: NS, tokenIds: tokens, candidates: cands(2) }).ranked[0]!;
      counts.set(top.candidate.pod, (counts.get(top.candidate.pod) ?? 0) + 1);
      loads.begin(top.candidate.streamId, tokens.length - top.savedTokens).prefillDone();
    }
    assert.deepEqual([...counts.values()].sort(), [10, 10]);
  });

  test("tiers: GPU saves more than CPU, CPU more than STORAGE", () => {
    const idx = new FakeIndex();
    const prefix = seq(1, 40);
    idx.store("pod-0", prefix, "STORAGE");
    idx.store("pod-1", prefix, "CPU");
    idx.store("pod-2", prefix, "GPU");
    const p = new KvAwarePolicy(idx, new LoadTracker());
    const d = p.route({ ns: NS, tokenIds: [...prefix, 1], candidates: cands(3) });
    assert.deepEqual(
      d.ranked.map((s) => s.candidate.pod),
      ["pod-2", "pod-1", "pod-0"],
    );
    assert.equal(
      savedTokens(10, { GPU: 4, CPU: 7, STORAGE: 10 }, 4, 10, KV_AWARE_DEFAULTS),
      4 * (4 + 3 * 0.8 + 3 * 0.5),
    );
  });

  test("the engine always computes the last token: a fully cached prompt is capped one block short", () => {
    assert.equal(reusableBlocks(16, 4), 3);
    assert.equal(reusableBlocks(17, 4), 4);
    assert.equal(reusableBlocks(1, 4), 0);
    const idx = new FakeIndex();
    idx.store("pod-0", seq(1, 16));
    const d = new KvAwarePolicy(idx, new LoadTracker()).route({
      ns: NS,
      tokenIds: seq(1, 16),
      candidates: cands(1),
    });
    assert.equal(d.ranked[0]!.matchedTokens, 12);
  });

  test("scraped engine queue and KV usage move traffic away", () => {
    const idx = new FakeIndex();
    const engine = new Map([
      ["pod-0", { waiting: 5, running: 10, kvUsage: 0.5 }],
      ["pod-1", { waiting: 0, running: 1, kvUsage: 0.99 }],
      ["pod-2", { waiting: 0, running: 1, kvUsage: 0.3 }],
    ]);
    const loads = new LoadTracker({ engineLoad: (pod) => engine.get(pod) });
    const d = new KvAwarePolicy(idx, loads).route({ ns: NS, tokenIds: seq(1, 100), candidates: cands(3) });
    assert.deepEqual(
      d.ranked.map((s) => s.candidate.pod),
      ["pod-2", "pod-1", "pod-0"],
    );
    const e = estimateTtft(100, 0, d.ranked[1]!.load, KV_AWARE_DEFAULTS);
    assert.ok(e.kvFactor > 1.8 && e.kvFactor < 2);
  });

  test("property: the choice minimises the score; rankings are permutations of the candidates", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ hold: fc.nat(12), inflight: fc.nat(5), live: fc.boolean() }), {
          minLength: 1,
          maxLength: 6,
        }),
        fc.nat(60),
        (pods, extra) => {
          const idx = new FakeIndex();
          const loads = new LoadTracker();
          const prompt = seq(1, 48 + extra);
          const c = cands(pods.length);
          pods.forEach((pd, i) => {
            if (pd.hold > 0) idx.store(`pod-${i}`, prompt.slice(0, pd.hold * BS));
            c[i]!.live = pd.live;
            for (let k = 0; k < pd.inflight; k++) loads.begin(`pod-${i}`, 10);
          });
          const d = new KvAwarePolicy(idx, loads).route({ ns: NS, tokenIds: prompt, candidates: c });
          assert.equal(d.ranked.length, pods.length);
          assert.equal(new Set(d.ranked.map((s) => s.candidate.pod)).size, pods.length);
          const min = Math.min(...d.ranked.map((s) => s.score));
          assert.equal(d.ranked[0]!.score, min);
          for (const s of d.ranked) {
            const i = Number(s.candidate.pod.slice(4));
            const expected = pods[i]!.live ? Math.min(pods[i]!.hold, reusableBlocks(prompt.length, BS)) : 0;
            assert.equal(s.matchedBlocks, expected);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("prefix-approx", () => {
  test("learns from its own routing and follows a prefix it sent before", () => {
    let now = 1000;
    const loads = new LoadTracker();
    const p = new PrefixApproxPolicy(loads, { ttlMs: 5000, now: () => now });
    const conv = seq(500, 64);
    const req = (tokens: number[]): RouteRequest => ({ ns: NS, tokenIds: tokens, candidates: cands(4) });
    const first = p.route(req(conv));
    assert.equal(first.ranked[0]!.matchedBlocks, 0);
    p.onDispatched(req(conv), first.ranked[0]!);
    const target = first.ranked[0]!.candidate.pod;
    // the follow-up turn extends the conversation: same pod, prefix matched
    const next = p.route(req([...conv, ...seq(9, 16)]));
    assert.equal(next.ranked[0]!.candidate.pod, target);
    assert.equal(next.ranked[0]!.matchedBlocks, 16);
    // after the TTL the knowledge is gone
    now += 5001;
    const later = p.route(req([...conv, ...seq(9, 16)]));
    assert.equal(later.ranked[0]!.matchedBlocks, 0);
  });

  test("imbalance overrides cache affinity", () => {
    const loads = new LoadTracker();
    const p = new PrefixApproxPolicy(loads, { balanceAbsThreshold: 2, balanceRelThreshold: 1.5 });
    const hot = seq(1, 64);
    const r: RouteRequest = { ns: NS, tokenIds: hot, candidates: cands(2) };
    const d = p.route(r);
    const chosen = d.ranked[0]!;
    p.onDispatched(r, chosen);
    for (let i = 0; i < 3; i++) loads.begin(chosen.candidate.streamId, 0);
    const d2 = p.route(r);
    assert.notEqual(d2.ranked[0]!.candidate.pod, chosen.candidate.pod);
    assert.equal(d2.ranked[1]!.matchedBlocks, 16);
  });

  test("bounded: never remembers more than maxBlocks nodes", () => {
    const p = new PrefixApproxPolicy(new LoadTracker(), { maxBlocks: 50 });
    for (let i = 0; i < 100; i++) {
      const r: RouteRequest = { ns: NS, tokenIds: seq(i * 1000, 40), candidates: cands(3) };
      p.onDispatched(r, p.route(r).ranked[0]!);
      assert.ok(p.size <= 50);
    }
    assert.ok(p.evicted >= 950);
    p.forget("pod-0");
    p.forget("pod-1");
    p.forget("pod-2");
    assert.equal(p.size, 0);
  });
});

describe("simple policies", () => {
  const loads = new LoadTracker();
  const deps = { index: new FakeIndex(), loads };
  const req: RouteRequest = { ns: NS, tokenIds: seq(1, 20), candidates: cands(3) };

  test("round-robin rotates", () => {
    const p = createPolicy("round-robin", deps);
    const picks = Array.from({ length: 6 }, () => p.route(req).ranked[0]!.candidate.pod);
    assert.deepEqual(picks, ["pod-0", "pod-1", "pod-2", "pod-0", "pod-1", "pod-2"]);
  });

  test("least-request picks the least loaded", () => {
    const t1 = loads.begin("pod-0", 1);
    const t2 = loads.begin("pod-2", 1);
    const p = createPolicy("least-request", deps);
    assert.equal(p.route(req).ranked[0]!.candidate.pod, "pod-1");
    t1.done();
    t2.done();
    t2.done(); // idempotent
    assert.equal(loads.totalInflight(), 0);
  });

  test("random is seeded: same seed, same sequence; uses every pod", () => {
    const a = createPolicy("random", { ...deps, seed: 42 });
    const b = createPolicy("random", { ...deps, seed: 42 });
    const pa = Array.from({ length: 30 }, () => a.route(req).ranked[0]!.candidate.pod);
    const pb = Array.from({ length: 30 }, () => b.route(req).ranked[0]!.candidate.pod);
    assert.deepEqual(pa, pb);
    assert.equal(new Set(pa).size, 3);
  });
});

describe("load, engine metrics and feedback", () => {
  test("load tickets release prefill at first byte and the request at the end", () => {
    const l = new LoadTracker();
    const t = l.begin("p", 100);
    assert.deepEqual(l.load("p", "p"), {
      drainedPrefillTokens: null,
      inflightRequests: 1,
      inflightPrefillRequests: 1,
      inflightPrefillTokens: 100,
      engineWaiting: null,
      engineRunning: null,
      kvUsage: null,
    });
    t.prefillDone();
    t.prefillDone();
    assert.equal(l.load("p", "p").inflightPrefillTokens, 0);
    assert.equal(l.load("p", "p").inflightRequests, 1);
    t.done();
    assert.equal(l.snapshot().length, 0);
  });

  test("parses vLLM gauges, per engine rank", () => {
    const text = [
      "# HELP vllm:num_requests_waiting x",
      "# TYPE vllm:num_requests_waiting gauge",
      'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
      'vllm:num_requests_waiting{engine="1",model_name="m"} 1.0',
      'vllm:num_requests_running{engine="0",model_name="m"} 7.0',
      'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
      'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7',
      "vllm:prefix_cache_hits_total 12",
    ].join("\n");
    const p = parseEngineMetrics(text)!;
    assert.deepEqual(p.pod, { waiting: 4, running: 7, kvUsage: 0.6 });
    assert.deepEqual(p.ranks.get(1), { waiting: 1, running: 0, kvUsage: 0.7 });
    assert.equal(parseEngineMetrics("garbage\n# nothing"), null);
  });
});

describe("dry runs (explain)", () => {
  test("a dry run ranks like the next real decision without advancing any state", () => {
    for (const name of ["kv-aware", "prefix-approx", "least-request", "round-robin", "random"] as const) {
      const p = createPolicy(name, { index: new FakeIndex(), loads: new LoadTracker(), seed: 3 });
      const req: RouteRequest = { ns: NS, tokenIds: seq(1, 20), candidates: cands(3) };
      const real: string[] = [];
      for (let i = 0; i < 5; i++) {
        if (name !== "random") {
          const dry = p.route({ ...req, dryRun: true }).ranked[0]!.candidate.pod;
          const again = p.route({ ...req, dryRun: true }).ranked[0]!.candidate.pod;
          assert.equal(dry, again, `${name}: dry runs agree`);
          const r = p.route(req).ranked[0]!.candidate.pod;
          assert.equal(r, dry, `${name}: the dry run predicted the real choice`);
          real.push(r);
        } else {
          p.route({ ...req, dryRun: true });
          real.push(p.route(req).ranked[0]!.candidate.pod);
        }
      }
      if (name === "round-robin") assert.deepEqual(real, ["pod-0", "pod-1", "pod-2", "pod-0", "pod-1"]);
      if (name === "random") {
        const q = createPolicy("random", { index: new FakeIndex(), loads: new LoadTracker(), seed: 3 });
        const plain = Array.from({ length: 5 }, () => q.route(req).ranked[0]!.candidate.pod);
        assert.deepEqual(real, plain, "dry runs do not perturb the seeded sequence");
      }
    }
  });
});

test("undefined options never hide defaults", () => {
  const p = new KvAwarePolicy(new FakeIndex(), new LoadTracker(), { gpuWeight: undefined, cpuWeight: 0.3 });
  assert.equal(p.options.gpuWeight, KV_AWARE_DEFAULTS.gpuWeight);
  assert.equal(p.options.cpuWeight, 0.3);
});
