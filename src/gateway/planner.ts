import { performance } from "node:perf_hooks";
import type { PodInfo } from "../discovery/types.ts";
import { podStreamIds, type StreamState } from "../events/types.ts";
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
import type { ResponseAffinity } from "./affinity.ts";
import { badRequest, noHealthyPod, noReadyPod, notFound } from "./errors.ts";
import type { PodHealth } from "./health.ts";
import type { GatewayMetrics } from "./metrics.ts";
import { allTokens, bestPrompt, encodePrompts, type PromptSpec } from "./prompts.ts";
import { type ParsedRequest, type RequestKind, validateExplain } from "./request.ts";
import { parseForEndpoint } from "./request-kinds.ts";

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
  /** which pod stored which response (`previous_response_id` follow-ups go there) */
  affinity?: Pick<ResponseAffinity, "podOf">;
  /** a stream's block size learned from its events (null: none seen yet) */
  streamBlockSize?: (streamId: string) => number | null;
  /** block size of a stream whose events have not said yet and whose pod declares none (tokens) */
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
  /** prompts tokenized for routing (more than 1: a batch, routed by its most-cached prompt) */
  prompts: number;
  /** the prompt the decision routed by (index into the request's prompts; 0 for one prompt) */
  chosenPrompt?: number;
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
  /** the block size the stream was matched in */
  blockSize: number;
  /** in rotation by the health signal (pods out of rotation are listed in `outOfRotation`) */
  healthy: boolean;
  matchedBlocks: number;
  matchedTokens: number;
  tiers: ScoredCandidate["tiers"];
  savedTokens: number;
  /** the factor (0..1) its claims were weighed by: the prediction feedback's trust in the stream */
  trust: number;
  load: ScoredCandidate["load"];
  score: number;
  terms?: Record<string, number>;
  chosen: boolean;
}

export interface ExplainResult {
  /** the request kind the body was parsed as, and whether it routes by prefix (else by load) */
  kind: RequestKind;
  routeByPrefix: boolean;
  /** prompts the request puts through the cache (0: not tokenized) and the one routed by */
  prompts: number;
  chosenPrompt: number;
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
    if (parsed.model === "") parsed.model = this.onlyModel();
    const { ns, candidates } = this.candidatesFor(parsed.model);
    const lists =
      parsed.routeByPrefix === false ? null : await this.tokenize(parsed, ns.model, candidates[0]?.http);
    // re-read candidates: readiness or stream states may have changed while tokenizing
    const fresh = this.candidatesFor(parsed.model);
    // a continued response lives on the pod that stored it (when that pod is still a candidate)
    const owner = parsed.previousResponseId && this.o.affinity?.podOf(parsed.previousResponseId);
    if (owner && fresh.candidates.some((c) => c.pod === owner))
      fresh.candidates = fresh.candidates.filter((c) => c.pod === owner);
    // a salted request matches from its salt (NamespaceRef.salt)
    const salt = parsed.cacheSalt ?? null;
    const routeNs = salt === null ? fresh.ns : { ...fresh.ns, salt };
    // a batch goes where its most-cached prompt is (prompts.ts)
    const chosenPrompt = lists === null ? 0 : bestPrompt(this.o.policy, routeNs, fresh.candidates, lists);
    const ids = lists === null ? null : lists[chosenPrompt];
    const route: RouteRequest = { ns: routeNs, tokenIds: ids ?? [], candidates: fresh.candidates };
    if (!claim) route.dryRun = true;
    const policy = this.o.policy;
    const t0 = performance.now();
    const decision = policy.route(route);
    this.o.metrics?.routingSeconds.observe({ policy: policy.name }, (performance.now() - t0) / 1000);
    // claim the load now, so a request routed right after this one already sees it
    const top = decision.ranked[0];
    const total = lists === null ? 0 : lists.reduce((a, l) => a + l.length, 0);
    const ticket =
      claim && top ? this.o.loads.begin(top.candidate.streamId, Math.max(0, total - top.savedTokens)) : null;
    return {
      parsed,
      route,
      decision,
      tokenized: ids !== null,
      prompts: lists?.length ?? 0,
      chosenPrompt,
      outOfRotation: fresh.out,
      ticket,
    };
  }

  /** The model a request without one means: the fleet's only model (400 when it has several). */
  private onlyModel(): string {
    const models = new Set(this.o.pods.pods().map((p) => p.model));
    if (models.size === 1) return [...models][0]!;
    throw badRequest(
      "invalid_value",
      models.size === 0
        ? "`model` is required: no pod is known yet"
        : `\`model\` is required: the gateway serves ${models.size} models`,
      "model",
    );
  }

  /**
   * `POST /admin/route/explain`: every candidate's match, load and score, and the choice. With
   * `endpoint` (an API path such as `/v1/embeddings`) the body is that endpoint's request body,
   * parsed as the endpoint parses it; without, `{model, lora?, messages | prompt | token_ids}`.
   */
  async explain(body: Record<string, unknown>, endpoint: string | null = null): Promise<ExplainResult> {
    // `lora` (as in /admin/index/match) names the adapter; requests address adapters by name
    const b = typeof body.lora === "string" && body.lora !== "" ? { ...body, model: body.lora } : body;
    const parsed = endpoint === null ? validateExplain(b) : parseForEndpoint(endpoint, b);
    const plan = await this.plan(parsed, false);
    const top = plan.decision.ranked[0];
    return {
      kind: parsed.kind,
      routeByPrefix: parsed.routeByPrefix !== false,
      prompts: plan.prompts,
      chosenPrompt: plan.chosenPrompt ?? 0,
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
        blockSize: s.candidate.blockSize ?? plan.route.ns.blockSize,
        healthy: this.health?.isHealthy(s.candidate.pod) ?? true,
        matchedBlocks: s.matchedBlocks,
        matchedTokens: s.matchedTokens,
        tiers: s.tiers,
        savedTokens: s.savedTokens,
        trust: s.trust ?? 1,
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
    // each stream is matched in its own block size: what its events carry, else what its pod
    // declares (pods of one model may run different sizes)
    const learned = this.o.streamBlockSize;
    const candidates: Candidate[] = [];
    for (const p of pods) {
      for (const { streamId, rank } of podStreamIds(p)) {
        candidates.push({
          streamId,
          pod: p.name,
          rank,
          http: p.http,
          live: this.o.streamState(streamId) === "live",
          blockSize: learned?.(streamId) ?? p.blockSize ?? this.o.defaultBlockSize,
        });
      }
    }
    const blockSize = candidates[0]?.blockSize ?? first.blockSize ?? this.o.defaultBlockSize;
    return { ns: { model: base, lora: isBase ? null : model, blockSize }, candidates, out };
  }

  /** Each prompt's token ids (a batch: its first MAX_ROUTED_PROMPTS), or null: routed by load only. */
  private async tokenize(
    parsed: ParsedRequest,
    baseModel: string,
    baseUrl: string | undefined,
  ): Promise<number[][] | null> {
    const prompts = promptsOf(parsed);
    if (allTokens(prompts)) return encodePrompts(null, prompts);
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
      const ids = await encodePrompts(tok, prompts);
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

/** A request's prompts: its `prompts`, or the one in its single-prompt fields. */
function promptsOf(p: ParsedRequest): PromptSpec[] {
  if (p.prompts !== undefined) return p.prompts;
  if (p.tokenIds !== null) return [{ type: "tokens", ids: p.tokenIds }];
  if (p.chat !== null) return [{ type: "chat", chat: p.chat }];
  return [{ type: "text", text: p.prompt ?? "", addSpecialTokens: p.addSpecialTokens }];
}
