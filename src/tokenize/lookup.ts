import type { TokenizerRegistry } from "./registry.ts";
import type { Tokenizer } from "./types.ts";

/** Tokenizer for a base model, or null when there is none (the request is then routed by load only). */
export type TokenizerLookup = (
  model: string,
  /** an engine serving the model (for `remote` tokenizers) */
  baseUrl?: string,
) => Promise<Tokenizer | null> | Tokenizer | null;

/** The lookup of a registry: its tokenizer for models it knows, null for the others. */
export function registryLookup(reg: Pick<TokenizerRegistry, "has" | "get">): TokenizerLookup {
  return (model, baseUrl) => (reg.has(model) ? reg.get(model, baseUrl ? { baseUrl } : {}) : null);
}
