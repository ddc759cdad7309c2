import type { Plan } from "./planner.ts";

/**
 * What the gateway's routing did lately, for the admin dashboard's live feed: the last routing
 * decisions with their explain (candidates' matched tokens, load and score), and per-second
 * buckets of requests per pod, predicted vs engine-reported cached tokens and first-byte times.
 *
 * Everything is bounded: `maxDecisions` decisions, `maxCandidates` candidates per decision,
 * `historySeconds` buckets, `maxPods` pods per bucket (the rest count under "(other)") and
 * `maxTtftSamples` first-byte samples per bucket. Listeners hear each decision as it is made.
 */
export interface ActivityOptions {
  maxDecisions: number;
  maxCandidates: number;
  historySeconds: number;
  maxPods: number;
  maxTtftSamples: number;
}

export const ACTIVITY_DEFAULTS: ActivityOptions = {
  maxDecisions: 50,
  maxCandidates: 16,
  historySeconds: 300,
  maxPods: 64,
  maxTtftSamples: 2048,
};

export interface DecisionCandidate {
  pod: string;
  rank: number | null;
  live: boolean;
  matchedTokens: number;
  savedTokens: number;
  /** the factor its claims were weighed by (the prediction feedback's trust in the stream) */
  trust: number;
  inflight: number;
  prefillTokens: number;
  score: number;
}

export interface DecisionRecord {
  /** 1, 2, ... in the order decisions were made */
  id: number;
  /** epoch ms */
  t: number;
  model: string;
  policy: string;
  promptTokens: number;
  tokenized: boolean;
  /** where the request went: the policy's pick, or after a retry the pod that answered */
  choice: { pod: string; rank: number | null } | null;
  /** the pick failed before any byte and the request went to `choice` instead (null: no retry) */
  retry: { from: { pod: string; rank: number | null }; reason: string } | null;
  /** candidates best first (at most maxCandidates); `candidates` counts them all */
  ranked: DecisionCandidate[];
  candidates: number;
}

export interface ActivityPoint {
  /** epoch seconds of the bucket */
  t: number;
  /** requests routed per pod in that second */
  pods: Record<string, number>;
  /** engine-reported responses in that second: prompt tokens, cached tokens the index predicted, cached tokens the engines reported */
  promptTokens: number;
  predictedTokens: number;
  cachedTokens: number;
  /** first-byte time percentiles (s) of the responses started in that second; null without any */
  ttftP50: number | null;
  ttftP90: number | null;
}

interface Bucket {
  t: number;
  pods: Map<string, number>;
  promptTokens: number;
  predictedTokens: number;
  cachedTokens: number;
  ttft: number[];
}

const OTHER = "(other)";

export class RouteActivity {
  private readonly o: ActivityOptions;
  private readonly decisions: DecisionRecord[] = [];
  private readonly history: ActivityPoint[] = [];
  private cur: Bucket | null = null;
  private nextId = 1;
  private readonly listeners = new Set<(d: DecisionRecord) => void>();
  /** each dispatched plan's record, for a retry to update */
  private readonly byPlan = new WeakMap<Plan, DecisionRecord>();

  constructor(
    opts: Partial<ActivityOptions> = {},
    private readonly now: () => number = Date.now,
  ) {
    this.o = { ...ACTIVITY_DEFAULTS, ...opts };
  }

  /** Hear each decision as it is made; returns the unsubscribe function. */
  onDecision(fn: (d: DecisionRecord) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** A request was routed (a real one: dispatch follows). */
  decided(plan: Plan): void {
    const ranked = plan.decision.ranked;
    const top = ranked[0];
    const d: DecisionRecord = {
      id: this.nextId++,
      t: this.now(),
      model: plan.parsed.model,
      policy: plan.decision.policy,
      promptTokens: plan.route.tokenIds.length,
      tokenized: plan.tokenized,
      choice: top ? { pod: top.candidate.pod, rank: top.candidate.rank } : null,
      retry: null,
      ranked: ranked.slice(0, this.o.maxCandidates).map((s) => ({
        pod: s.candidate.pod,
        rank: s.candidate.rank,
        live: s.candidate.live,
        matchedTokens: s.matchedTokens,
        savedTokens: s.savedTokens,
        trust: s.trust ?? 1,
        inflight: s.load.inflightRequests,
        prefillTokens: s.load.inflightPrefillTokens,
        score: s.score,
      })),
      candidates: ranked.length,
    };
    this.decisions.push(d);
    this.byPlan.set(plan, d);
    if (this.decisions.length > this.o.maxDecisions) this.decisions.shift();
    if (top) this.count(top.candidate.pod, 1);
    for (const fn of this.listeners) fn(d);
  }

  /**
   * The plan's pick failed before any byte and the request was sent to `to` (proxy.ts): the
   * record shows where it went and why (listeners hear the updated record under its id).
   */
  retried(plan: Plan, to: { pod: string; rank: number | null }, reason: string): void {
    const d = this.byPlan.get(plan);
    if (d === undefined || d.choice === null) return;
    // the first pick stays the one the policy made; a second retry does not exist (one retry)
    d.retry ??= { from: d.choice, reason };
    this.count(d.choice.pod, -1);
    this.count(to.pod, 1);
    d.choice = { pod: to.pod, rank: to.rank };
    for (const fn of this.listeners) fn(d);
  }

  /** Requests per pod in the current second (a pod beyond maxPods counts under "(other)"). */
  private count(pod: string, n: number): void {
    const b = this.bucket();
    const key = b.pods.has(pod) || b.pods.size < this.o.maxPods ? pod : OTHER;
    const v = (b.pods.get(key) ?? 0) + n;
    if (v > 0) b.pods.set(key, v);
    else b.pods.delete(key);
  }

  /** A response's first byte came `seconds` after its request. */
  firstByte(seconds: number): void {
    const b = this.bucket();
    if (b.ttft.length < this.o.maxTtftSamples) b.ttft.push(seconds);
  }

  /** A response's usage: the index predicted `predicted` cached tokens, the engine reported `cached`. */
  usage(promptTokens: number, predicted: number, cached: number): void {
    const b = this.bucket();
    b.promptTokens += promptTokens;
    b.predictedTokens += predicted;
    b.cachedTokens += cached;
  }

  /** The last decisions, oldest first. */
  recent(): DecisionRecord[] {
    return [...this.decisions];
  }

  /** Closed per-second buckets (the current second excluded), oldest first; `since`: after that second. */
  series(since = -1): ActivityPoint[] {
    this.roll(Math.floor(this.now() / 1000));
    if (since < 0) return [...this.history];
    const out: ActivityPoint[] = [];
    for (const p of this.history) if (p.t > since) out.push(p);
    return out;
  }

  private bucket(): Bucket {
    const sec = Math.floor(this.now() / 1000);
    this.roll(sec);
    this.cur ??= { t: sec, pods: new Map(), promptTokens: 0, predictedTokens: 0, cachedTokens: 0, ttft: [] };
    return this.cur;
  }

  /** Close the current bucket once its second is over, with empty points for idle seconds between. */
  private roll(sec: number): void {
    const c = this.cur;
    const last = c ? c.t : (this.history.at(-1)?.t ?? null);
    if (last === null || sec <= last) return;
    if (c) {
      this.push(pointOf(c));
      this.cur = null;
    }
    // idle seconds read as zero, up to the history's length
    const from = Math.max(last + 1, sec - this.o.historySeconds);
    for (let t = from; t < sec; t++) this.push(emptyPoint(t));
  }

  private push(p: ActivityPoint): void {
    this.history.push(p);
    if (this.history.length > this.o.historySeconds) this.history.shift();
  }
}

function emptyPoint(t: number): ActivityPoint {
  return { t, pods: {}, promptTokens: 0, predictedTokens: 0, cachedTokens: 0, ttftP50: null, ttftP90: null };
}

function pointOf(b: Bucket): ActivityPoint {
  const s = b.ttft.sort((x, y) => x - y);
  const q = (p: number) => (s.length === 0 ? null : s[Math.min(s.length - 1, Math.floor(p * s.length))]);
  return {
    t: b.t,
    pods: Object.fromEntries(b.pods),
    promptTokens: b.promptTokens,
    predictedTokens: b.predictedTokens,
    cachedTokens: b.cachedTokens,
    ttftP50: q(0.5),
    ttftP90: q(0.9),
  };
}
