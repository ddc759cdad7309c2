/** Helpers shared by the routing policies: the load ranking and option merging. */
import type { ScoredCandidate } from "./types.ts";

/**
 * Ranking shared by load-based policies: score, then in-flight requests, then a rotating offset.
 * Sorts positions (numbers) rather than a wrapper object per candidate: with 100 candidates a
 * decision otherwise allocates 100 wrappers and two arrays just to order them.
 */
export function rankByScore(scored: ScoredCandidate[], rotation: number): ScoredCandidate[] {
  const n = scored.length;
  const r = rotation % n;
  const order: number[] = new Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((i, j) => {
    const a = scored[i];
    const b = scored[j];
    // the tie offset of position i is (i - r + n) % n
    return (
      a.score - b.score ||
      a.load.inflightRequests - b.load.inflightRequests ||
      ((i - r + n) % n) - ((j - r + n) % n)
    );
  });
  const out: ScoredCandidate[] = new Array(n);
  for (let k = 0; k < n; k++) out[k] = scored[order[k]];
  return out;
}

/** The entries of `o` whose value is not undefined (so they never hide a default). */
export function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
