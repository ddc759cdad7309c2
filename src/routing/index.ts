import { type KvAwareOptions, KvAwarePolicy } from "./kv-aware.ts";
import { type PrefixApproxOptions, PrefixApproxPolicy } from "./prefix-approx.ts";
import { LeastRequestPolicy, RandomPolicy, RoundRobinPolicy } from "./simple.ts";
import {
  type LoadSource,
  type MatchSource,
  POLICY_NAMES,
  type PolicyName,
  type RoutingPolicy,
  type TrustSource,
} from "./types.ts";

export { estimateTtft, KV_AWARE_DEFAULTS, KvAwarePolicy, reusableBlocks, savedTokens } from "./kv-aware.ts";
export { LoadTracker } from "./load.ts";
export { PREFIX_APPROX_DEFAULTS, PrefixApproxPolicy } from "./prefix-approx.ts";
export { LeastRequestPolicy, RandomPolicy, RoundRobinPolicy } from "./simple.ts";
export * from "./types.ts";

export interface PolicyDeps {
  index: MatchSource;
  loads: LoadSource;
  kvAware?: Partial<KvAwareOptions>;
  prefixApprox?: Partial<PrefixApproxOptions>;
  /** seed of the random policy */
  seed?: number;
  /** kv-aware weighs each stream's claims by its trust (the prediction feedback) */
  trust?: TrustSource;
}

export function isPolicyName(s: string): s is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(s);
}

export function createPolicy(name: PolicyName, deps: PolicyDeps): RoutingPolicy {
  switch (name) {
    case "kv-aware":
      return new KvAwarePolicy(deps.index, deps.loads, deps.kvAware, deps.trust ?? null);
    case "prefix-approx":
      return new PrefixApproxPolicy(deps.loads, deps.prefixApprox);
    case "least-request":
      return new LeastRequestPolicy(deps.loads);
    case "round-robin":
      return new RoundRobinPolicy(deps.loads);
    case "random":
      return new RandomPolicy(deps.loads, deps.seed ?? 1);
  }
}
