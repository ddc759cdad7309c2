import type { NamespaceRef, TierCounts } from "../index/types.ts";

/**
 * Routing contract: a policy ranks the candidate engine streams (a pod, or one data-parallel
 * rank of a pod) for one request. The gateway tries the first and, when the connection fails
 * before any byte, the second.
 */
export type PolicyName = "kv-aware" | "prefix-approx" | "least-request" | "round-robin" | "random";

export const POLICY_NAMES: readonly PolicyName[] = [
  "kv-aware",
  "prefix-approx",
  "least-request",
  "round-robin",
  "random",
];

export interface Candidate {
  /** "<pod>" or "<pod>#<rank>" (the index's stream id) */
  streamId: string;
  pod: string;
  /** data-parallel rank, null for single-rank engines */
  rank: number | null;
  /** http base URL of the pod */
  http: string;
  /** the pod's event stream (this rank's) is `live`: only then does its cache count */
  live: boolean;
  /**
   * the stream's block size (tokens): learned from its events, else what the pod declares, else
   * the default; absent: `ns.blockSize`. kv-aware matches each candidate in its own size.
   */
  blockSize?: number;
}

export interface RouteRequest {
  /**
   * namespace the tokens are matched in (base model, adapter, block size); a candidate with its
   * own `blockSize` is matched in that size instead
   */
  ns: NamespaceRef;
  /** the prompt's token ids (empty when tokenization was not possible) */
  tokenIds: ArrayLike<number>;
  /** ready candidates serving the model/adapter, in a stable order (by stream id) */
  candidates: Candidate[];
  /** explain only: rank without advancing any policy state (rotation, RNG) */
  dryRun?: boolean;
}

/** Load of one stream as the policy saw it when scoring. */
export interface LoadView {
  /** requests this gateway sent to the stream that have not finished */
  inflightRequests: number;
  /** of those, requests still waiting for their first byte (in prefill) */
  inflightPrefillRequests: number;
  /** uncached prompt tokens of this gateway's requests to the stream still waiting for their first byte */
  inflightPrefillTokens: number;
  /**
   * the same backlog drained at the stream's prefill rate learned from observed time to first
   * byte (LoadTracker); null or absent before the stream has a rate
   */
  drainedPrefillTokens?: number | null;
  /** scraped `vllm:num_requests_waiting` (null when not scraped or stale) */
  engineWaiting: number | null;
  /** scraped `vllm:num_requests_running` */
  engineRunning: number | null;
  /** scraped `vllm:kv_cache_usage_perc` (0..1) */
  kvUsage: number | null;
}

export interface ScoredCandidate {
  candidate: Candidate;
  /** leading full blocks the policy believes the stream holds (0 when its stream is not live) */
  matchedBlocks: number;
  /** matchedBlocks * blockSize, capped at what the engine can reuse (prompt length - 1) */
  matchedTokens: number;
  tiers: TierCounts;
  /** prefill tokens saved after tier weights and the stream's trust */
  savedTokens: number;
  /** the factor (0..1) the stream's claims were weighed by (feedback.ts); absent: 1 */
  trust?: number;
  load: LoadView;
  /** lower is better; for kv-aware the estimated time to first token in token-equivalents */
  score: number;
  /** free-form explanation terms (e.g. queue, uncached, penalties) */
  terms?: Record<string, number>;
}

export interface RoutingDecision {
  policy: PolicyName;
  /** candidates best first; the first is the choice */
  ranked: ScoredCandidate[];
}

export interface RoutingPolicy {
  readonly name: PolicyName;
  /** Rank the candidates (never empty when candidates is non-empty). Must not throw on odd input. */
  route(req: RouteRequest): RoutingDecision;
  /** The request was sent to `chosen` (learning policies record it). */
  onDispatched?(req: RouteRequest, chosen: ScoredCandidate): void;
  /** A stream disappeared (pod removed): forget what is known about it. */
  forget?(streamId: string): void;
  close?(): void;
}

/** Where policies read load from (the gateway's LoadTracker plus scraped engine metrics). */
export interface LoadSource {
  load(streamId: string, pod: string): LoadView;
}

/** Where kv-aware reads how far a stream's cache claims hold (the prediction feedback, feedback.ts). */
export interface TrustSource {
  /** 0..1; 1 for a stream without evidence against it */
  trust(streamId: string): number;
}

/** Where kv-aware reads cache state from: the sync prefix index (subset of PrefixIndex). */
export interface MatchSource {
  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): import("../index/types.ts").StreamMatch[];
}
