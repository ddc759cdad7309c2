/**
 * Tokenization identical to vLLM's, for the mock engine and the gateway.
 *
 *   const tok = await loadTokenizer();                  // Qwen/Qwen3-0.6B, bundled tokenizer, cached per dir
 *   await tok.encodePrompt("Hello world");              // [9707, 1879]  (completions: add_special_tokens true)
 *   await tok.encodeChat({ messages, tools, chat_template_kwargs: { enable_thinking: false } });
 *   await tok.renderChat(req);                          // the rendered template text
 *
 *   const reg = TokenizerRegistry.fromSpecs(opts.tokenizer ?? [], { pool: { size: 1 }, metrics });
 *   const t = await reg.get(model, { baseUrl });        // TokenizerPool (local) or RemoteTokenizer
 *
 * Errors are `TokenizerError` with a stable `code` ("bad_request" → HTTP 400, "unknown_model" → 404,
 * "overloaded" → 429/503, "config"/"remote"/"internal" → 5xx).
 */
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
