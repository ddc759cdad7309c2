import { performance } from "node:perf_hooks";
import type { PredictionFeedback } from "../routing/feedback.ts";
import type { LoadTicket } from "../routing/load.ts";
import type { PolicyName, ScoredCandidate } from "../routing/types.ts";
import type { RouteActivity } from "./activity.ts";
import type { ResponseAffinity } from "./affinity.ts";
import type { MatchWatch } from "./match-watch.ts";
import type { GatewayMetrics } from "./metrics.ts";
import type { Plan } from "./planner.ts";
import { eventData } from "./sse.ts";

/**
 * What a pod's response tells the router: its first byte ends the request's prefill (the load
 * tracker counts it as decoding from then on), and its `usage` (the engine's cached-token count)
 * is the prediction's truth for the feedback loop.
 */
export class UsageAccounting {
  constructor(
    private readonly feedback: PredictionFeedback,
    private readonly metrics: GatewayMetrics,
    private readonly policy: PolicyName,
    private readonly affinity: ResponseAffinity | null = null,
    private readonly watch: MatchWatch | null = null,
    private readonly activity: RouteActivity | null = null,
  ) {}

  /** The response's first byte arrived `t0` (performance.now()) after the request did. */
  firstByte(ticket: Pick<LoadTicket, "prefillDone">, t0: number): void {
    ticket.prefillDone();
    const sec = (performance.now() - t0) / 1000;
    this.metrics.firstByteSeconds.observe({ policy: this.policy }, sec);
    this.activity?.firstByte(sec);
  }

  /** A whole non-streaming JSON body. */
  observeBody(pod: string, sc: ScoredCandidate, plan: Plan, body: Buffer): void {
    try {
      const obj = JSON.parse(body.toString("utf8")) as { usage?: unknown; id?: unknown };
      if (plan.parsed.kind === "responses" && typeof obj.id === "string") this.affinity?.record(obj.id, pod);
      this.observe(sc, plan, obj.usage);
    } catch {
      // not JSON: nothing to learn
    }
  }

  /**
   * Look at one SSE event; returns false to drop it (the usage chunk the gateway asked for on
   * the client's behalf: `injected`).
   */
  inspectEvent(ev: string, pod: string, sc: ScoredCandidate, plan: Plan, injected: boolean): boolean {
    // only the chunk carrying a usage object matters ("usage":null rides on every other chunk)
    if (!ev.includes('"usage":{') && !ev.includes('"usage": {')) return true;
    const data = eventData(ev);
    if (data === null || data === "[DONE]") return true;
    let obj: { usage?: unknown; choices?: unknown; type?: unknown; response?: { usage?: unknown } };
    try {
      obj = JSON.parse(data);
    } catch {
      return true;
    }
    // a responses stream: the final response object carries the usage (and its id)
    if (obj.type === "response.completed" || obj.type === "response.incomplete") {
      const id = (obj.response as { id?: unknown } | undefined)?.id;
      if (typeof id === "string") this.affinity?.record(id, pod);
      this.observe(sc, plan, obj.response?.usage);
      return true;
    }
    if (obj.usage === null || typeof obj.usage !== "object") return true;
    const final = Array.isArray(obj.choices) && obj.choices.length === 0;
    if (final) this.observe(sc, plan, obj.usage);
    return !(injected && final);
  }

  private observe(sc: ScoredCandidate, plan: Plan, usage: unknown): void {
    // a batch's usage sums every prompt while the prediction was for one: nothing to compare
    if (usage === null || typeof usage !== "object" || plan.prompts > 1) return;
    // chat/completions/pooling spell it prompt_tokens(_details); responses input_tokens(_details)
    const u = usage as {
      prompt_tokens?: unknown;
      prompt_tokens_details?: { cached_tokens?: unknown } | null;
      input_tokens?: unknown;
      input_tokens_details?: { cached_tokens?: unknown } | null;
    };
    const given = u.prompt_tokens ?? u.input_tokens;
    if (plan.tokenized && this.watch !== null)
      this.watch.observe(sc, plan.route.ns, plan.route.tokenIds, typeof given === "number" ? given : null);
    const cached = (u.prompt_tokens_details ?? u.input_tokens_details)?.cached_tokens;
    if (typeof cached !== "number" || !plan.tokenized) return;
    const promptTokens = typeof given === "number" ? given : plan.route.tokenIds.length;
    // per stream (a DP pod's request ran on the candidate's rank); only kv-aware's prediction is the index's
    const err = this.feedback.observe(
      sc.candidate,
      sc.matchedTokens,
      cached,
      promptTokens,
      this.policy === "kv-aware",
    );
    this.metrics.predictionErrorTokens.observe({ policy: this.policy }, Math.abs(err));
    this.activity?.usage(promptTokens, sc.matchedTokens, cached);
  }
}
