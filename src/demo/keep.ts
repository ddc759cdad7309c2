/**
 * After the comparison, `kvsync demo --keep <seconds>` keeps a fleet up under light traffic so the
 * dashboard shows routing live: a fresh fleet with the first policy, fed a few conversations at a
 * time (new seeds, same shape) until the time is up or the signal aborts (Ctrl-C).
 */
import type { PolicyName } from "../routing/types.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import type { Logger } from "../util/log.ts";
import type { RequestOutcome } from "./report.ts";
import { type DemoOptions, drive, startFleet } from "./run.ts";
import { generateWorkload } from "./workload.ts";

/** conversations in flight while the fleet is kept up: enough to see, little enough to read */
const KEEP_CONCURRENCY = 4;
const KEEP_PROGRESS_MS = 15_000;

export interface KeepResult {
  requests: number;
  errors: number;
  seconds: number;
}

/** Keep a fleet with `policy` up for `seconds` (or until `signal`), driving light traffic. */
export async function keepFleetUp(
  o: DemoOptions,
  policy: PolicyName,
  seconds: number,
  log: Logger,
  progress: (line: string) => void,
): Promise<KeepResult> {
  const t0 = Date.now();
  const deadline = AbortSignal.timeout(seconds * 1000);
  const signal = o.signal ? AbortSignal.any([o.signal, deadline]) : deadline;
  const tokenizers = new TokenizerRegistry({ pool: o.tokenizerPool ? {} : false });
  const outcomes: RequestOutcome[] = [];
  let ticker: NodeJS.Timeout | null = null;
  try {
    const fleet = await startFleet(o, policy, tokenizers, log);
    try {
      progress(`[keep] ${policy} fleet up for ${seconds} s with light traffic (Ctrl-C ends)`);
      ticker = setInterval(() => {
        const ok = outcomes.filter((x) => x.ok);
        const prompt = ok.reduce((a, x) => a + x.promptTokens, 0);
        const cached = ok.reduce((a, x) => a + x.cachedTokens, 0);
        const left = Math.max(0, seconds - (Date.now() - t0) / 1000);
        progress(
          `[keep] ${outcomes.length} requests  hit rate ${prompt ? ((cached / prompt) * 100).toFixed(1) : "0.0"} %` +
            `  errors ${outcomes.length - ok.length}  ${left.toFixed(0)} s left`,
        );
        // the counts only feed this line: keep the last window's worth
        if (outcomes.length > 10_000) outcomes.splice(0, outcomes.length - 10_000);
      }, KEEP_PROGRESS_MS);
      ticker.unref();
      for (let round = 1; !signal.aborted; round++) {
        const w = generateWorkload({ ...o.workload, seed: o.seed + round * 104_729, requests: 200 });
        await drive(
          w,
          fleet.gw.url,
          { ...o, signal, concurrency: Math.min(KEEP_CONCURRENCY, o.concurrency), progressEvery: 0 },
          policy,
          progress,
          (r) => outcomes.push(r),
        );
      }
    } finally {
      await fleet.close();
    }
  } finally {
    if (ticker) clearInterval(ticker);
    await tokenizers.close();
  }
  return {
    requests: outcomes.length,
    errors: outcomes.filter((x) => !x.ok).length,
    seconds: (Date.now() - t0) / 1000,
  };
}
