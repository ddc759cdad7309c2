import { seededRandom } from "../util/rng.ts";
import { rankByScore } from "./shared.ts";
import type { LoadSource, RouteRequest, RoutingDecision, RoutingPolicy, ScoredCandidate } from "./types.ts";

const NO_TIERS = { GPU: 0, CPU: 0, STORAGE: 0 };

function plain(req: RouteRequest, loads: LoadSource, score: (i: number, s: ScoredCandidate) => number) {
  return req.candidates.map((candidate, i) => {
    const s: ScoredCandidate = {
      candidate,
      matchedBlocks: 0,
      matchedTokens: 0,
      tiers: { ...NO_TIERS },
      savedTokens: 0,
      load: loads.load(candidate.streamId, candidate.pod),
      score: 0,
    };
    s.score = score(i, s);
    return s;
  });
}

/** Fewest in-flight requests at this gateway (ties rotate). */
export class LeastRequestPolicy implements RoutingPolicy {
  readonly name = "least-request" as const;
  private rotation = 0;
  constructor(private readonly loads: LoadSource) {}

  route(req: RouteRequest): RoutingDecision {
    const scored = plain(req, this.loads, (_i, s) => s.load.inflightRequests);
    const ranked = rankByScore(scored, req.dryRun ? this.rotation : this.rotation++);
    return { policy: this.name, ranked };
  }
}

/** Strict rotation over the candidates (per model/adapter namespace). */
export class RoundRobinPolicy implements RoutingPolicy {
  readonly name = "round-robin" as const;
  private readonly next = new Map<string, number>();
  private static readonly MAX_KEYS = 10_000;
  constructor(private readonly loads: LoadSource) {}

  route(req: RouteRequest): RoutingDecision {
    const n = req.candidates.length;
    const key = `${req.ns.model}\u0000${req.ns.lora ?? ""}`;
    const start = this.next.get(key) ?? 0;
    if (!req.dryRun) {
      if (!this.next.has(key) && this.next.size >= RoundRobinPolicy.MAX_KEYS) this.next.clear();
      this.next.set(key, (start + 1) % 1_000_000_007);
    }
    const rot = n === 0 ? 0 : start % n;
    const scored = plain(req, this.loads, (i) => (i - rot + n) % n);
    return { policy: this.name, ranked: scored.sort((a, b) => a.score - b.score) };
  }
}

/** Uniformly random order (seeded, so runs are reproducible). */
export class RandomPolicy implements RoutingPolicy {
  readonly name = "random" as const;
  private readonly rnd: () => number;
  private draws = 0;
  constructor(
    private readonly loads: LoadSource,
    seed = 1,
  ) {
    this.rnd = seededRandom(seed);
  }

  route(req: RouteRequest): RoutingDecision {
    // a dry run draws from a throwaway generator so the real sequence is unchanged
    const rnd = req.dryRun ? seededRandom(this.draws) : this.rnd;
    if (!req.dryRun) this.draws++;
    const scored = plain(req, this.loads, () => rnd());
    return { policy: this.name, ranked: scored.sort((a, b) => a.score - b.score) };
  }
}
