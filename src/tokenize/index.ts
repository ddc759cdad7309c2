export { ChatTemplate, normalizeMessages, normalizeTools } from "./chat.ts";
export { isTokenizerError, TokenizerError, type TokenizerErrorCode } from "./errors.ts";
export {
  DEFAULT_MODEL,
  defaultTokenizerDir,
  HfTokenizer,
  type LoadOptions,
  loadTokenizer,
  loadTokenizerCore,
  segmentationPlan,
  splitAtBoundary,
  type TokenizerCore,
} from "./hf-tokenizer.ts";
export { type TokenizerMetrics, tokenizerMetrics } from "./metrics.ts";
export { TokenizerPool, type TokenizerPoolOptions, type TokenizerPoolStats } from "./pool.ts";
export {
  parseTokenizerSpec,
  TokenizerRegistry,
  type TokenizerRegistryOptions,
  type TokenizerSpec,
} from "./registry.ts";
export { RemoteTokenizer, type RemoteTokenizerOptions } from "./remote-tokenizer.ts";
export { SegmentCache, type SegmentCacheOptions, type SegmentCacheStats } from "./segment-cache.ts";
export type { ChatMessage, ChatRequestLike, Tokenizer } from "./types.ts";
