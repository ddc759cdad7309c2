/**
 * Tokenizer worker (a piscina task handler): encodes texts with the tokenizer loaded (once per
 * thread) from `dir`. Task {dir, texts, addSpecialTokens} or {dir, warm: true}; result
 * {ids: Uint32Array[]} (buffers moved, not copied) or {error: {code, message}}: a tokenizer error
 * is an answer, so a rejected task always means the thread itself failed.
 */
import { move, transferableSymbol, valueSymbol } from "piscina";
import { isTokenizerError } from "./errors.ts";
import { encodeWithCore, loadTokenizerCore } from "./hf-tokenizer.ts";

export interface WorkerRequest {
  dir: string;
  texts?: string[];
  addSpecialTokens?: boolean;
  warm?: boolean;
}

export type WorkerResponse = { ids: Uint32Array[] } | { error: { code: string; message: string } };

export default async function encode(m: WorkerRequest): Promise<WorkerResponse> {
  try {
    const core = await loadTokenizerCore(m.dir);
    const ids: Uint32Array[] = [];
    for (const t of m.texts ?? [])
      ids.push(Uint32Array.from(encodeWithCore(core, t, m.addSpecialTokens === true)));
    const res: WorkerResponse = { ids };
    return move({
      [transferableSymbol]: ids.map((a) => a.buffer),
      [valueSymbol]: res,
    } as Parameters<typeof move>[0]) as unknown as WorkerResponse;
  } catch (e) {
    return {
      error: { code: isTokenizerError(e) ? e.code : "internal", message: (e as Error)?.message ?? String(e) },
    };
  }
}
