/**
 * Workloads of the evaluator, all in one shape: the Mooncake trace format (`timestamp` ms,
 * `input_length`, `output_length`, `hash_ids`: one id per prompt block, chained like prefix
 * hashes, so equal ids at position i mean equal prefixes up to i). The generators write the same
 * shape, so every workload goes through one simulator and one report.
 */
import { readFileSync } from "node:fs";
import { seededRandom } from "../util/rng.ts";

export interface TraceRequest {
  /** arrival, ms since the start of the workload */
  timestamp: number;
  input_length: number;
  output_length: number;
  /** one id per block of the prompt (the last may be partial) */
  hash_ids: number[];
}

export class WorkloadError extends Error {}

/** Parse Mooncake JSONL; a malformed line is an error naming its line number (a trace is input, not a stream). */
export function parseMooncake(text: string, source = "trace"): TraceRequest[] {
  const out: TraceRequest[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch {
      throw new WorkloadError(`${source}:${i + 1}: not JSON`);
    }
    const r = o as Partial<TraceRequest>;
    if (
      typeof r !== "object" ||
      r === null ||
      !Number.isFinite(r.timestamp) ||
      !Number.isInteger(r.input_length) ||
      (r.input_length as number) < 1 ||
      !Number.isInteger(r.output_length) ||
      (r.output_length as number) < 0 ||
      !Array.isArray(r.hash_ids) ||
      !r.hash_ids.every((h) => Number.isInteger(h) && h >= 0)
    ) {
      throw new WorkloadError(
        `${source}:${i + 1}: expected {timestamp, input_length >= 1, output_length >= 0, hash_ids: non-negative integers}`,
      );
    }
    out.push({
      timestamp: r.timestamp as number,
      input_length: r.input_length as number,
      output_length: r.output_length as number,
      hash_ids: r.hash_ids as number[],
    });
  }
  // the simulator replays in arrival order; a trace sorted by time stays as it is (stable sort)
  out.sort((a, b) => a.timestamp - b.timestamp);
  return out;
}

export function loadMooncake(path: string, limit?: number): TraceRequest[] {
  const all = parseMooncake(readFileSync(path, "utf8"), path);
  return limit !== undefined && limit > 0 ? all.slice(0, limit) : all;
}

export interface ArrivalOptions {
  /** multiply every timestamp by this (0.5 = the same requests in half the time: twice the load) */
  timeScale?: number;
  /** replace the timestamps by a Poisson process of this many requests per second */
  rate?: number;
  seed?: number;
}

/** Rescale or replace arrival times (a new array; requests are shared, not copied). */
export function withArrivals(reqs: readonly TraceRequest[], o: ArrivalOptions): TraceRequest[] {
  if (o.rate !== undefined && o.rate > 0) {
    const rnd = seededRandom(o.seed ?? 1);
    let t = 0;
    return reqs.map((r) => {
      const x = { ...r, timestamp: t };
      t += (-Math.log(1 - rnd()) * 1000) / (o.rate as number);
      return x;
    });
  }
  const s = o.timeScale ?? 1;
  if (s === 1) return reqs.slice();
  const t0 = reqs.length > 0 ? reqs[0].timestamp : 0;
  return reqs.map((r) => ({ ...r, timestamp: (r.timestamp - t0) * s }));
}

/** Request rate of a workload (requests per second over its span). */
export function meanRate(reqs: readonly TraceRequest[]): number {
  if (reqs.length < 2) return 0;
  const span = reqs[reqs.length - 1].timestamp - reqs[0].timestamp;
  return span > 0 ? ((reqs.length - 1) * 1000) / span : 0;
}

const uniform = (rnd: () => number, lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));

export interface SharedPrefixOptions {
  seed: number;
  requests: number;
  /** groups, each with its own shared prefix (a system prompt, a document, a few-shot block) */
  groups: number;
  /** blocks of each group's shared prefix */
  prefixBlocks: number;
  /** blocks of each request's own suffix: uniform in [min, max] */
  minSuffixBlocks: number;
  maxSuffixBlocks: number;
  /** output tokens: uniform in [min, max] */
  minOutput: number;
  maxOutput: number;
  /** mean request rate (Poisson arrivals) */
  rate: number;
  blockTokens: number;
}

export const SHARED_PREFIX_DEFAULTS: Omit<SharedPrefixOptions, "seed" | "requests" | "blockTokens"> = {
  groups: 64,
  prefixBlocks: 8,
  minSuffixBlocks: 1,
  maxSuffixBlocks: 4,
  minOutput: 50,
  maxOutput: 400,
  rate: 4,
};

/**
 * Shared-prefix groups: each request picks a group (Zipf-like popularity, so a few groups are
 * hot) and appends its own blocks to the group's prefix.
 */
export function sharedPrefixWorkload(o: SharedPrefixOptions): TraceRequest[] {
  const rnd = seededRandom(o.seed);
  // popularity ~ 1 / (rank + 1): the head groups are hot, the tail is cold
  const weights = Array.from({ length: o.groups }, (_, i) => 1 / (i + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const pick = () => {
    let x = rnd() * total;
    for (let i = 0; i < weights.length; i++) {
      x -= weights[i];
      if (x < 0) return i;
    }
    return weights.length - 1;
  };
  let nextId = o.groups * o.prefixBlocks;
  const out: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < o.requests; i++) {
    const g = pick();
    const ids = Array.from({ length: o.prefixBlocks }, (_, k) => g * o.prefixBlocks + k);
    const suffix = uniform(rnd, o.minSuffixBlocks, o.maxSuffixBlocks);
    for (let k = 0; k < suffix; k++) ids.push(nextId++);
    // the last block is partial, as in real prompts
    const input = (ids.length - 1) * o.blockTokens + uniform(rnd, 1, o.blockTokens);
    out.push({
      timestamp: t,
      input_length: input,
      output_length: uniform(rnd, o.minOutput, o.maxOutput),
      hash_ids: ids,
    });
    t += (-Math.log(1 - rnd()) * 1000) / o.rate;
  }
  return out;
}

export interface MultiTurnOptions {
  seed: number;
  requests: number;
  /** conversations open at once: a finished one is replaced by a new one */
  concurrentConversations: number;
  /** blocks of the system prompt shared by every conversation */
  systemBlocks: number;
  /** turns per conversation: uniform in [min, max] */
  minTurns: number;
  maxTurns: number;
  /** blocks each turn adds (user message + the previous reply): uniform in [min, max] */
  minTurnBlocks: number;
  maxTurnBlocks: number;
  minOutput: number;
  maxOutput: number;
  /** mean request rate (Poisson arrivals) */
  rate: number;
  blockTokens: number;
}

export const MULTI_TURN_DEFAULTS: Omit<MultiTurnOptions, "seed" | "requests" | "blockTokens"> = {
  concurrentConversations: 64,
  systemBlocks: 2,
  minTurns: 3,
  maxTurns: 12,
  minTurnBlocks: 1,
  maxTurnBlocks: 3,
  minOutput: 50,
  maxOutput: 400,
  rate: 4,
};

/**
 * Multi-turn chat: every turn re-sends the whole conversation (system prompt, earlier turns and
 * replies) plus its new blocks, so a conversation's prefix grows turn by turn and only the pod
 * that served the last turn holds it. Turns of open conversations interleave at random.
 */
export function multiTurnWorkload(o: MultiTurnOptions): TraceRequest[] {
  const rnd = seededRandom(o.seed);
  let nextId = o.systemBlocks;
  const system = Array.from({ length: o.systemBlocks }, (_, k) => k);
  interface Conv {
    ids: number[];
    turnsLeft: number;
  }
  const open = (): Conv => ({ ids: system.slice(), turnsLeft: uniform(rnd, o.minTurns, o.maxTurns) });
  const convs: Conv[] = Array.from({ length: Math.max(1, o.concurrentConversations) }, open);
  const out: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < o.requests; i++) {
    const ci = Math.floor(rnd() * convs.length);
    const c = convs[ci];
    const add = uniform(rnd, o.minTurnBlocks, o.maxTurnBlocks);
    for (let k = 0; k < add; k++) c.ids.push(nextId++);
    const input = (c.ids.length - 1) * o.blockTokens + uniform(rnd, 1, o.blockTokens);
    out.push({
      timestamp: t,
      input_length: input,
      output_length: uniform(rnd, o.minOutput, o.maxOutput),
      hash_ids: c.ids.slice(),
    });
    // the partial last block is rewritten by the next turn: the next turn's blocks replace it
    c.ids.pop();
    c.ids.push(nextId++);
    c.turnsLeft--;
    if (c.turnsLeft <= 0) convs[ci] = open();
    t += (-Math.log(1 - rnd()) * 1000) / o.rate;
  }
  return out;
}
