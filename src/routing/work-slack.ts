/**
 * kv-aware's work slack: a non-greedy step after the greedy ranking. Among the candidates whose
 * estimated time to first token is within `slack` of the best one (score <= best * (1 + slack)),
 * the request goes to the one that adds the least prefill work to the fleet (fewest uncached
 * prompt tokens); ties keep the ranking's order.
 *
 * Why: a greedy router sends a request whose prefix a busy pod is computing right now (another
 * request of the same group, still in prefill) to an idle pod when that looks slightly faster for
 * this request alone. The idle pod then recomputes the whole prompt: seconds of prefill that every
 * later request sent there waits behind, and a second copy of the prefix that evicts other
 * prefixes. Accepting a bounded delay for the one request keeps that pod free and that cache room
 * for the others (docs/routing-quality.md measures it against the greedy oracle).
 */
import type { ScoredCandidate } from "./types.ts";

/**
 * Move the least-work candidate within the slack to the front of `ranked` (in place, no
 * allocation; the others keep their order). `promptTokens` is the request's prompt length;
 * a candidate's work is `promptTokens - savedTokens`. Returns `ranked`.
 */
export function preferLeastWork(
  ranked: ScoredCandidate[],
  promptTokens: number,
  slack: number,
): ScoredCandidate[] {
  if (!(slack > 0) || ranked.length < 2) return ranked;
  const limit = ranked[0].score * (1 + slack);
  let pick = 0;
  let pickWork = Math.max(0, promptTokens - ranked[0].savedTokens);
  for (let i = 1; i < ranked.length; i++) {
    const c = ranked[i];
    if (c.score > limit) break; // ranked by score: nothing later is within the slack
    const work = Math.max(0, promptTokens - c.savedTokens);
    if (work < pickWork) {
      pick = i;
      pickWork = work;
    }
  }
  if (pick > 0) {
    const chosen = ranked[pick];
    for (let i = pick; i > 0; i--) ranked[i] = ranked[i - 1];
    ranked[0] = chosen;
  }
  return ranked;
}
