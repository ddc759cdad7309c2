import { performance } from "node:perf_hooks";
import type { PodInfo } from "../discovery/types.ts";
import { type StreamState, streamIdOf } from "../events/types.ts";
import type { NamespaceRef } from "../index/types.ts";
import type { LoadTicket, LoadTracker } from "../routing/load.ts";
import type {
  Candidate,
  PolicyName,
  RouteRequest,
  RoutingDecision,
  RoutingPolicy,
  ScoredCandidate,
} from "../routing/types.ts";
import { isTokenizerError } from "../tokenize/errors.ts";
import type { TokenizerLookup } from "../tokenize/lookup.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { noHealthyPod, noReadyPod, notFound } from "./errors.ts";
import type { PodHealth } from "./health.ts";
import type { GatewayMetrics } from "./metrics.ts";
import { type ParsedRequest, validateExplain } from "./request.ts";

export interface PlannerOptions {
  /** the fleet (a PodSet); only ready pods are candidates */
  pods: { pods(): PodInfo[] };
  /** state of an event stream ("<pod>" or "<pod>#<rank>"); only `live` streams' cache counts */
  streamState: (streamId: string) => StreamState | undefined;
  policy: RoutingPolicy;
  loads: LoadTracker;
  /** the health signal (null: every ready pod is in rotation) */
  health?: Pick<PodHealth, "isHealthy" | "status"> | null;
  tokenizer?: TokenizerLookup;
  /** block size when a pod does not say (tokens) */
  defaultBlockSize: number;
  /** tokenize and routing timings, tokenize failures (absent: not measured) */
  metrics?: Pick<GatewayMetrics, "tokenizeSeconds" | "tokenizeFailures" | "routingSeconds">;
  log?: Logger;
}

/** A routing decision for one request, with what dispatch and accounting need of it. */
export interface Plan {
  parsed: ParsedRequest;
  route: RouteRequest;
  decision: RoutingDecision;
  tokenized: boolean;
  /** ready pods serving the model that the health signal keeps out of rotation */
  outOfRotation: PodInfo[];
  /** load claim on the top candidate, taken in the same tick as the decision (null for a dry run) */
  ticket: LoadTicket | null;
}

export interface ExplainCandidate {
  pod: string;
  rank: number | null;
  streamId: string;
  live: boolean;
  /** in rotation by the health signal (pods out of rotation are listed in `outOfRotation`) */
  healthy: boolean;
  matchedBlocks: number;
  matchedTokens: number;
  tiers: ScoredCandidate["tiers"];
  savedTokens: number;
  load: ScoredCandidate["load"];
  score: number;
  terms?: Record<string, number>;
  chosen: boolean;
}

export interface ExplainResult {
  model: string;
  lora: string | null;
  blockSize: number;
  policy: PolicyName;
  promptTokens: number;
  tokenized: boolean;
  choice: { pod: string; rank: number | null; streamId: string } | null;
  candidates: ExplainCandidate[];
  /** ready pods serving the model that the health signal keeps out of rotation */
  outOfRotation: Array<{ pod: string; reason: string | null; since: number }>;
}

/**
 * The routing half of the gateway, without HTTP: a parsed request → its candidates (ready,
 * healthy pods and their ranks serving the model), its token ids, and the policy's decision.
 */
export class Planner {
  private readonly health: Pick<PodHealth, "isHealthy" | "status"> | null;
  private readonly log: Logger;

  constructor(private readonly o: PlannerOptions) {
    this.health = o.health ?? null;
    this.log = o.log ?? createLogger("gateway");
  }

  /**
   * Route a request. `claim` (a real request: dispatch follows) takes the load on the chosen
   * candidate at once; without it the decision is a dry run.
   */
  async plan(parsed: ParsedRequest, claim: boolean): Promise<Plan> {
    const { ns, candidates } = this.candidatesFor(parsed.model);
    const ids = await this.tokenize(parsed, ns.model, candidates[0]?.http);
    // re-read candidates: readiness or stream states may have changed while tokenizing
    const fresh = this.candidatesFor(parsed.model);
    const salt = parsed.cacheSalt ?? null;
    const routeNs = salt === null ? fresh.ns : { ...fresh.ns, salt };
    const route: RouteRequest = { ns: routeNs, tokenIds: ids ?? [], candidates: fresh.candidates };
    if (!claim) route.dryRun = true;
    const policy = this.o.policy;
    const t0 = performance.now();
    const decision = policy.route(route);
    this.o.metrics?.routingSeconds.observe({ policy: policy.name }, (performance.now() - t0) / 1000);
    // claim the load now, so a request routed right after this one already sees it
    const top = decision.ranked[0];
    const ticket =
      claim && top
        ? this.o.loads.begin(top.candidate.streamId, route.tokenIds.length - top.savedTokens)
        : null;
    return { parsed, route, decision, tokenized: ids !== null, outOfRotation: fresh.out, ticket };
  }

  /** `POST /admin/route/explain`: every candidate's match, load and score, and the choice. */
  async explain(body: Record<string, unknown>): Promise<ExplainResult> {
    // `lora` (as in /admin/index/match) names the adapter; requests address adapters by name
    const parsed = validateExplain(
      typeof body.lora === "string" && body.lora !== "" ? { ...body, model: body.lora } : body,
    );
    const plan = await this.plan(parsed, false);
    const top = plan.decision.ranked[0];
    return {
      model: parsed.model,
      lora: plan.route.ns.lora,
      blockSize: plan.route.ns.blockSize,
      policy: plan.decision.policy,
      promptTokens: plan.route.tokenIds.length,
      tokenized: plan.tokenized,
      choice: top
        ? { pod: top.candidate.pod, rank: top.candidate.rank, streamId: top.candidate.streamId }
        : null,
      candidates: plan.decision.ranked.map((s, i) => ({
        pod: s.candidate.pod,
        rank: s.candidate.rank,
        streamId: s.candidate.streamId,
        live: s.candidate.live,
        healthy: this.health?.isHealthy(s.candidate.pod) ?? true,
        matchedBlocks: s.matchedBlocks,
        matchedTokens: s.matchedTokens,
        tiers: s.tiers,
        savedTokens: s.savedTokens,
        load: s.load,
        score: s.score,
        terms: s.terms,
        chosen: i === 0,
      })),
      outOfRotation: plan.outOfRotation.map((p) => {
        const h = this.health?.status(p.name);
        return { pod: p.name, reason: h?.reason ?? null, since: h?.since ?? 0 };
      }),
    };
  }

  /** Which ready candidates serve the request's model (404 / 503 otherwise) and the namespace. */
  private candidatesFor(model: string): { ns: NamespaceRef; candidates: Candidate[]; out: PodInfo[] } {
    const all = this.o.pods.pods();
    const serving = all.filter((p) => p.model === model || p.loras.includes(model));
    if (serving.length === 0) throw notFound(`The model \`${model}\` does not exist.`);
    const ready = serving.filter((p) => p.ready);
    if (ready.length === 0) throw noReadyPod(model);
    const first = ready[0]!;
    const isBase = first.model === model;
    const base = isBase ? model : first.model;
    const serves = ready.filter((p) =>
      isBase ? p.model === model : p.model === base && p.loras.includes(model),
    );
    // pods out of rotation get nothing while another pod can answer; none left is a quick 503
    const h = this.health;
    const pods = h === null ? serves : serves.filter((p) => h.isHealthy(p.name));
    const out = h === null ? [] : serves.filter((p) => !h.isHealthy(p.name));
    if (pods.length === 0) throw noHealthyPod(model, serves.length);
    const blockSize = first.blockSize ?? this.o.defaultBlockSize;
    const candidates: Candidate[] = [];
    for (const p of pods) {
      const dp = Math.max(1, Math.floor(p.dataParallelSize || 1));
      for (let r = 0; r < dp; r++) {
        const streamId = streamIdOf(p.name, dp > 1 ? r : null);
        candidates.push({
          streamId,
          pod: p.name,
          rank: dp > 1 ? r : null,
          http: p.http,
          live: this.o.streamState(streamId) === "live",
        });
      }
    }
    return { ns: { model: base, lora: isBase ? null : model, blockSize }, candidates, out };
  }

  /** The prompt's token ids, or null when it cannot be tokenized (routed by load only). */
  private async tokenize(
    parsed: ParsedRequest,
    baseModel: string,
    baseUrl: string | undefined,
  ): Promise<number[] | null> {
    if (parsed.tokenIds !== null) return parsed.tokenIds;
    const lookup = this.o.tokenizer;
    if (lookup === undefined) return null;
    const metrics = this.o.metrics;
    const t0 = performance.now();
    try {
      const tok = await lookup(baseModel, baseUrl);
      if (tok === null) {
        metrics?.tokenizeFailures.inc({ reason: "no_tokenizer" });
        return null;
      }
      const ids =
        parsed.kind === "chat"
          ? await tok.encodeChat(parsed.chat!)
          : await tok.encodePrompt(parsed.prompt ?? "", parsed.addSpecialTokens);
      metrics?.tokenizeSeconds.observe({ kind: parsed.kind }, (performance.now() - t0) / 1000);
      return ids;
    } catch (err) {
      // the engine is the authority on what it accepts: route by load and let it answer
      const reason = isTokenizerError(err) ? err.code : "error";
      metrics?.tokenizeFailures.inc({ reason });
      this.log.debug(
        { event: "gateway.tokenize_failed", model: baseModel, reason, err: String(err) },
        "tokenize failed",
      );
      return null;
    }
  }
}
