/** Helpers shared by the routing policies: the load ranking and option merging. */
import type { ScoredCandidate } from "./types.ts";

/** Ranking shared by load-based policies: score, then in-flight requests, then a rotating offset. */
export function rankByScore(scored: ScoredCandidate[], rotation: number): ScoredCandidate[] {
  const n = scored.length;
  const order = scored.map((s, i) => ({ s, tie: (i - (rotation % n) + n) % n }));
  order.sort(
    (a, b) => a.s.score - b.s.score || a.s.load.inflightRequests - b.s.load.inflightRequests || a.tie - b.tie,
  );
  return order.map((x) => x.s);
}

/** The entries of `o` whose value is not undefined (so they never hide a default). */
export function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
