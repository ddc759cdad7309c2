/** The KV-aware gateway: `startGateway(opts)` → `{ url, adminUrl, close() }` (see gateway.ts). */
export { GatewayError, type OpenAiErrorBody } from "./errors.ts";
export { type RunningGateway, type StartGatewayOptions, startGateway } from "./gateway.ts";
export { GatewayMetrics } from "./metrics.ts";
export { type Plan, Planner, type PlannerOptions } from "./planner.ts";
export {
  DEFAULT_BLOCK_SIZE,
  type ExplainCandidate,
  type ExplainResult,
  GATEWAY_DEFAULTS,
  GatewayCore,
  type GatewayCoreOptions,
  type TokenizerLookup,
} from "./server.ts";
