import type { Logger } from "../util/log.ts";
import { definedOnly } from "./shared.ts";

export interface FeedbackOptions {
  /** weight of the newest sample in the per-pod moving average */
  alpha: number;
  /** mean |predicted - actual| / prompt tokens above which a pod is reported */
  threshold: number;
  /** samples before a pod can be reported */
  minSamples: number;
  /** at most one warning per pod per this many ms */
  warnIntervalMs: number;
  /** pods tracked at most (the oldest is forgotten) */
  maxPods: number;
}

export const FEEDBACK_DEFAULTS: Readonly<FeedbackOptions> = Object.freeze({
  alpha: 0.1,
  threshold: 0.25,
  minSamples: 10,
  warnIntervalMs: 60_000,
  maxPods: 10_000,
});

interface PodStat {
  ewma: number;
  samples: number;
  lastWarn: number;
}

/**
 * Compares the cached tokens the router predicted with what the engine reports
 * (`usage.prompt_tokens_details.cached_tokens`) and flags pods whose error stays high: a sign of
 * a stale index (lost events, clock-skewed restarts, a hash seed mismatch).
 */
export class PredictionFeedback {
  private readonly o: FeedbackOptions;
  private readonly pods = new Map<string, PodStat>();

  constructor(
    private readonly log: Logger,
    options: Partial<FeedbackOptions> = {},
  ) {
    this.o = { ...FEEDBACK_DEFAULTS, ...definedOnly(options) };
  }

  /** Record one observation; returns the signed error (predicted - actual) in tokens. */
  observe(pod: string, predicted: number, actual: number, promptTokens: number, warn = true): number {
    const err = predicted - actual;
    const rel = Math.min(1, Math.abs(err) / Math.max(1, promptTokens));
    let s = this.pods.get(pod);
    if (s === undefined) {
      if (this.pods.size >= this.o.maxPods) {
        const oldest = this.pods.keys().next().value;
        if (oldest !== undefined) this.pods.delete(oldest);
      }
      s = { ewma: rel, samples: 0, lastWarn: Number.NEGATIVE_INFINITY };
      this.pods.set(pod, s);
    }
    s.samples++;
    s.ewma = s.samples === 1 ? rel : s.ewma + this.o.alpha * (rel - s.ewma);
    if (warn && s.samples >= this.o.minSamples && s.ewma > this.o.threshold) {
      const now = performance.now();
      if (now - s.lastWarn >= this.o.warnIntervalMs) {
        s.lastWarn = now;
        this.log.warn(
          {
            event: "gateway.prediction_error_high",
            pod,
            meanRelError: Number(s.ewma.toFixed(3)),
            samples: s.samples,
          },
          "predicted cached tokens keep disagreeing with the engine (stale index?)",
        );
      }
    }
    return err;
  }

  /** mean relative error per pod */
  errors(): Array<{ pod: string; meanRelError: number; samples: number }> {
    return [...this.pods].map(([pod, s]) => ({ pod, meanRelError: s.ewma, samples: s.samples }));
  }

  forget(pod: string): void {
    this.pods.delete(pod);
  }
}
