/**
 * The `kvsync gateway --trust-*` flags: the prediction feedback (src/routing/feedback.ts) that
 * weighs each stream's cache claims by how well the engine's reported cache hits bear them out.
 */
import type { Command } from "commander";
import { FEEDBACK_DEFAULTS, type FeedbackOptions } from "../routing/feedback.ts";
import { opt, parseFloatArg, parseIntArg } from "../util/cli-options.ts";

export interface FeedbackCliOptions {
  trustAlpha: number;
  trustWarmupSamples: number;
  trustSuspectBelow: number;
  trustRecoverAbove: number;
  trustRebuildIntervalMs: number;
  trustHalfLifeMs: number;
}

export function addFeedbackOptions(cmd: Command): Command {
  const D = FEEDBACK_DEFAULTS;
  return cmd
    .addOption(
      opt(
        "--trust-alpha <x>",
        "weight of the newest response in a stream's trust (moving average of engine-reported / predicted cached tokens; only over-prediction lowers it)",
        "KVSYNC_TRUST_ALPHA",
        D.alpha,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--trust-warmup-samples <n>",
        "responses per stream before its trust moves",
        "KVSYNC_TRUST_WARMUP_SAMPLES",
        D.warmupSamples,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--trust-suspect-below <x>",
        "trust below which a stream is suspect: its claims are weighed by its trust, a warning names the likely cause, and the stream is rebuilt from its engine's buffer",
        "KVSYNC_TRUST_SUSPECT_BELOW",
        D.suspectBelow,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--trust-recover-above <x>",
        "trust at which a suspect stream is trusted again",
        "KVSYNC_TRUST_RECOVER_ABOVE",
        D.recoverAbove,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--trust-rebuild-interval-ms <n>",
        "at most one rebuild of a suspect stream per this many ms",
        "KVSYNC_TRUST_REBUILD_INTERVAL_MS",
        D.rebuildIntervalMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--trust-half-life-ms <n>",
        "between responses, a stream's distance from full trust halves every this many ms, so a suspect stream that gets few requests is judged again later (0 = trust moves only with responses)",
        "KVSYNC_TRUST_HALF_LIFE_MS",
        D.halfLifeMs,
      ).argParser(parseIntArg),
    );
}

/** The gateway's `feedback` option from the flags. */
export function feedbackOptionsFrom(o: FeedbackCliOptions): { feedback: Partial<FeedbackOptions> } {
  return {
    feedback: {
      alpha: o.trustAlpha,
      warmupSamples: o.trustWarmupSamples,
      suspectBelow: o.trustSuspectBelow,
      recoverAbove: o.trustRecoverAbove,
      rebuildIntervalMs: o.trustRebuildIntervalMs,
      halfLifeMs: o.trustHalfLifeMs,
    },
  };
}
