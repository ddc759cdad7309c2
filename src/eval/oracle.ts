/**
 * The greedy oracle: not deployable, a reference. It sees every modelled engine's cache and queue
 * exactly and instantly (no events, no lag) and sends each request where its own time to first
 * token is estimated lowest right now:
 *
 *   work  = prompt tokens still to prefill on the pod (waiting + running prefills) + own uncached
 *   steps = ceil(work / tokenBudget)
 *   ttft  = rest of the step in flight + work * prefillMsPerToken
 *           + steps * (stepMs + decodeMsPerSeq * running requests)
 *
 * Greedy: it ignores what its choice does to later requests (the load it piles on a pod that holds
 * a hot prefix), which is why a policy can beat it.
 */
import type { EngineModel, EngineModelOptions, SimRequest } from "./engine-model.ts";

export interface OracleChoice {
  pod: number;
  matchedBlocks: number;
  savedTokens: number;
  estimateMs: number;
}

export class OraclePolicy {
  readonly name = "oracle";
  private rotation = 0;

  constructor(
    private readonly engines: readonly EngineModel[],
    private readonly o: EngineModelOptions,
    private readonly now: () => number,
  ) {}

  choose(r: SimRequest): OracleChoice {
    const t = this.o.timing;
    const now = this.now();
    const n = this.engines.length;
    let best: OracleChoice | null = null;
    let bestLoad = 0;
    const start = this.rotation++ % n;
    for (let k = 0; k < n; k++) {
      const p = (start + k) % n;
      const e = this.engines[p];
      const hit = e.cachedPrefix(r.hashIds, r.reusableBlocks);
      const saved = hit * this.o.blockTokens;
      const work = e.pendingPrefillTokens() + r.inputLength - saved;
      const steps = Math.ceil(work / this.o.tokenBudget);
      const inFlight = e.restOfStep(now);
      const running = e.running.length;
      const est = inFlight + work * t.prefillMsPerToken + steps * (t.stepMs + t.decodeMsPerSeq * running);
      const load = running + e.numWaiting;
      if (best === null || est < best.estimateMs || (est === best.estimateMs && load < bestLoad)) {
        best = { pod: p, matchedBlocks: hit, savedTokens: saved, estimateMs: est };
        bestLoad = load;
      }
    }
    return best as OracleChoice;
  }
}
