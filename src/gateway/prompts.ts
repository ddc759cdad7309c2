import type { NamespaceRef } from "../index/types.ts";
import type { Candidate, RoutingPolicy } from "../routing/types.ts";
import { encodePair, responsesChat } from "../tokenize/inputs.ts";
import type { ChatRequestLike, Tokenizer } from "../tokenize/types.ts";

/**
 * The prompts a request puts through the engine's prefix cache, in the form the tokenizer
 * needs (the engine renders them the same way: src/tokenize/inputs.ts), and the choice of the
 * one a batch is routed by.
 */
export type PromptSpec =
  | { type: "text"; text: string; addSpecialTokens: boolean }
  | { type: "tokens"; ids: number[] }
  | { type: "chat"; chat: ChatRequestLike }
  | { type: "responses"; body: Record<string, unknown> }
  | { type: "pair"; query: string; doc: string };

/**
 * A batch's prompts beyond this many are not tokenized for routing (they are still sent): the
 * routing cost of a request stays bounded whatever its batch size.
 */
export const MAX_ROUTED_PROMPTS = 32;

/** Whether every prompt is given as token ids (no tokenizer needed). */
export function allTokens(prompts: readonly PromptSpec[]): boolean {
  return prompts.every((p) => p.type === "tokens");
}

/** Token ids of the first MAX_ROUTED_PROMPTS prompts (throws what the tokenizer throws). */
export async function encodePrompts(
  tok: Tokenizer | null,
  prompts: readonly PromptSpec[],
): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of prompts.slice(0, MAX_ROUTED_PROMPTS)) {
    if (p.type === "tokens") out.push(p.ids);
    else if (tok === null) throw new Error("a text prompt needs a tokenizer");
    else if (p.type === "text") out.push(await tok.encodePrompt(p.text, p.addSpecialTokens));
    else if (p.type === "chat") out.push(await tok.encodeChat(p.chat));
    else if (p.type === "responses") out.push(await tok.encodeChat(responsesChat(p.body)));
    else out.push(await encodePair(tok, p.query, p.doc));
  }
  return out;
}

/**
 * The prompt of a batch to route by: the one some live candidate would save the most prefill
 * of (a dry-run ranking per prompt; the first prompt on a tie or when nothing is cached), so
 * a batch whose later prompt repeats a cached prefix goes where that prefix is. Returns its
 * index.
 */
export function bestPrompt(
  policy: RoutingPolicy,
  ns: NamespaceRef,
  candidates: Candidate[],
  lists: readonly number[][],
): number {
  if (lists.length <= 1) return 0;
  let best = 0;
  let bestSaved = -1;
  for (let i = 0; i < lists.length; i++) {
    const d = policy.route({ ns, tokenIds: lists[i], candidates, dryRun: true });
    let saved = 0;
    for (const s of d.ranked) if (s.savedTokens > saved) saved = s.savedTokens;
    if (saved > bestSaved) {
      bestSaved = saved;
      best = i;
    }
  }
  return best;
}
