/**
 * The routing-decision part of bench:gateway, also run per side by its A/B (bench/ab/gateway-ab.ts).
 */
import { performance } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import type { createIndex, PrefixIndex, StreamRef } from "../src/index/index.ts";
import { type BlockStored, blockStored, type HashKey, type hashFromInt } from "../src/protocol/index.ts";
import type { createPolicy, LoadTracker } from "../src/routing/index.ts";
import type { Candidate, RouteRequest } from "../src/routing/types.ts";
import { seededRandom } from "../src/util/rng.ts";
import { percentileSorted } from "../src/util/stats.ts";

export interface RoutingModules {
  createIndex: typeof createIndex;
  createPolicy: typeof createPolicy;
  LoadTracker: typeof LoadTracker;
  hashFromInt: typeof hashFromInt;
}

const MODEL = "Qwen/Qwen3-0.6B";
const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;

export interface RoutingFigures {
  pods: number;
  promptTokens: number;
  indexEntries: number;
  decisions: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  /** CPU time of this process per decision (immune to being descheduled on a busy machine) */
  cpuP50Us: number;
  cpuP99Us: number;
  avgMatchedBlocks: number;
  /**
   * the decision's own cost: each prompt's median wall time over its repeats, then p50 / p99
   * over the prompts. A decision the machine interrupted (descheduled, a GC) is one repeat of
   * its prompt, so this leaves the machine's noise out where p99Us keeps it
   */
  workP50Us: number;
  workP99Us: number;
  /** decisions during which a scavenge or other GC ran (the heap shrank across the call) */
  gcDecisions: number;
  /** of the decisions slower than the wall p99, the share that ran a GC */
  gcShareOfSlowest: number;
  /** young-generation bytes a decision allocates (mean over decisions without a GC) */
  allocBytes: number;
}

/**
 * Routing decision time of `kv-aware` (match + scoring, no tokenization) for 8k-token prompts over
 * 100 pods, against an index populated with realistic claims. `mods` are the index, policy and
 * load tracker of the tree under test (this one, or an A/B side's); the claims are built with
 * this tree's event builder (plain objects every version reads).
 */
export function routingBench(mods: RoutingModules, decisions: number): RoutingFigures {
  const PODS = 100;
  const BS = 16;
  const PROMPT_BLOCKS = 512; // 8192 tokens
  const TEMPLATES = 16;
  const TEMPLATE_BLOCKS = 128; // 2048-token tenant system prompts
  const CONVS_PER_POD = 12;
  const r = seededRandom(42);
  const tokens = (n: number) => {
    const t = new Array<number>(n);
    for (let i = 0; i < n; i++) t[i] = (r() * 151_000) | 0;
    return t;
  };
  let hashCounter = 1_000_000;
  const freshHash = (): HashKey => {
    hashCounter++;
    return mods.hashFromInt(hashCounter);
  };
  const stored = (hashes: HashKey[], parent: HashKey | null, tokenIds: number[]): BlockStored =>
    blockStored(hashes, parent, tokenIds, BS, { medium: "GPU" });
  const index: PrefixIndex = mods.createIndex({});
  const streams: StreamRef[] = Array.from({ length: PODS }, (_, i) => ({
    streamId: `pod-${i}`,
    pod: `pod-${i}`,
    rank: null,
    model: MODEL,
  }));
  const tmplTokens = Array.from({ length: TEMPLATES }, () => tokens(TEMPLATE_BLOCKS * BS));
  const tmplHashes = Array.from({ length: TEMPLATES }, () =>
    Array.from({ length: TEMPLATE_BLOCKS }, freshHash),
  );
  // skewed popularity: template t on a pod with probability ~ 1/(1+t/2)
  const convs: Array<{ pod: number; tmpl: number; tokens: number[] }> = [];
  let ts = 1;
  for (let p = 0; p < PODS; p++) {
    const held: number[] = [];
    for (let t = 0; t < TEMPLATES; t++) if (r() < 1 / (1 + t / 2)) held.push(t);
    if (held.length === 0) held.push(0);
    const events: BlockStored[] = [];
    for (const t of held) events.push(stored(tmplHashes[t], null, tmplTokens[t]));
    for (let c = 0; c < CONVS_PER_POD; c++) {
      const t = held[Math.floor(r() * held.length)];
      const n = 128 + Math.floor(r() * 256); // 2k-6k tokens of conversation after the system prompt
      const ct = tokens(n * BS);
      events.push(stored(Array.from({ length: n }, freshHash), tmplHashes[t][TEMPLATE_BLOCKS - 1], ct));
      convs.push({ pod: p, tmpl: t, tokens: ct });
    }
    index.applyBatch(streams[p], { ts: ts++, events, dpRank: null });
  }
  const candidates: Candidate[] = streams.map((s) => ({
    streamId: s.streamId,
    pod: s.pod,
    rank: null,
    http: `http://10.0.${s.pod.slice(4)}.1:8000`,
    live: true,
  }));
  const loads = new mods.LoadTracker();
  // some in-flight load, as a busy gateway has
  for (let i = 0; i < 300; i++) loads.begin(`pod-${Math.floor(r() * PODS)}`, 500 + Math.floor(r() * 4000));
  const policy = mods.createPolicy("kv-aware", { index, loads });
  const ns = { model: MODEL, lora: null, blockSize: BS };
  // prompts: 60 % continue a conversation (template + its history + new turn), 30 % a template
  // then new text, 10 % nothing cached anywhere; all 8192 tokens
  const N = decisions;
  const prompts: number[][] = [];
  for (let i = 0; i < 200; i++) {
    const x = r();
    let p: number[];
    if (x < 0.6) {
      const c = convs[Math.floor(r() * convs.length)];
      p = [...tmplTokens[c.tmpl], ...c.tokens];
    } else if (x < 0.9) p = [...tmplTokens[Math.floor(r() * TEMPLATES)]];
    else p = [];
    p.push(...tokens(PROMPT_BLOCKS * BS - p.length));
    prompts.push(p.slice(0, PROMPT_BLOCKS * BS));
  }
  const times = new Float64Array(N);
  const cpu = new Float64Array(N);
  const gc = new Uint8Array(N);
  let matched = 0;
  let allocSum = 0;
  let allocN = 0;
  for (let i = -200; i < N; i++) {
    const req: RouteRequest = { ns, tokenIds: prompts[(i + 200) % prompts.length], candidates };
    const h0 = getHeapStatistics().used_heap_size;
    const c0 = process.cpuUsage();
    const s = performance.now();
    const d = policy.route(req);
    const e = performance.now();
    const c1 = process.cpuUsage(c0);
    const h1 = getHeapStatistics().used_heap_size;
    if (i >= 0) {
      times[i] = (e - s) * 1000;
      cpu[i] = c1.user + c1.system;
      matched += d.ranked[0].matchedBlocks;
      // the heap only shrinks when a collection ran; otherwise it grew by what the call allocated
      // (and by the two objects the figures themselves allocate, a few hundred bytes)
      if (h1 < h0) gc[i] = 1;
      else {
        allocSum += h1 - h0;
        allocN++;
      }
    }
  }
  const P = prompts.length;
  const perPrompt = Array.from({ length: P }, () => [] as number[]);
  for (let i = 0; i < N; i++) perPrompt[(i + 200) % P].push(times[i]);
  const work = Float64Array.from(
    perPrompt.filter((x) => x.length > 0),
    (x) => x.sort((a, b) => a - b)[x.length >> 1],
  ).sort();
  const wallP99 = percentileSorted(Float64Array.from(times).sort(), 0.99);
  let slowest = 0;
  let slowestGc = 0;
  let gcDecisions = 0;
  for (let i = 0; i < N; i++) {
    gcDecisions += gc[i];
    if (times[i] > wallP99) {
      slowest++;
      slowestGc += gc[i];
    }
  }
  const sorted = times.sort();
  cpu.sort();
  let sum = 0;
  for (const x of sorted) sum += x;
  return {
    cpuP50Us: percentileSorted(cpu, 0.5),
    cpuP99Us: percentileSorted(cpu, 0.99),
    pods: PODS,
    promptTokens: PROMPT_BLOCKS * BS,
    indexEntries: index.stats().entries,
    decisions: N,
    p50Us: round(percentileSorted(sorted, 0.5), 1),
    p99Us: round(percentileSorted(sorted, 0.99), 1),
    meanUs: round(sum / N, 1),
    avgMatchedBlocks: round(matched / N, 1),
    workP50Us: round(percentileSorted(work, 0.5), 1),
    workP99Us: round(percentileSorted(work, 0.99), 1),
    gcDecisions,
    gcShareOfSlowest: slowest === 0 ? 0 : round(slowestGc / slowest, 2),
    allocBytes: allocN === 0 ? 0 : Math.round(allocSum / allocN),
  };
}
