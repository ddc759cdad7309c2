/**
 * Tokenizer worker thread: encodes texts with the tokenizer loaded (once) from a directory.
 * Protocol (parent → worker): {id, dir, texts, addSpecialTokens} or {id, dir, warm: true};
 * (worker → parent): {id, ids: Uint32Array[]} (buffers transferred) or {id, error: {code, message}}.
 */
import { parentPort } from "node:worker_threads";
import { isTokenizerError } from "./errors.ts";
import { encodeWithCore, loadTokenizerCore } from "./hf-tokenizer.ts";

export interface WorkerRequest {
  id: number;
  dir: string;
  texts?: string[];
  addSpecialTokens?: boolean;
  warm?: boolean;
}

export type WorkerResponse =
  | { id: number; ids: Uint32Array[] }
  | { id: number; error: { code: string; message: string } };

const port = parentPort;
if (port === null) throw new Error("tokenize/worker.ts must run in a worker thread");

port.on("message", async (m: WorkerRequest) => {
  try {
    const core = await loadTokenizerCore(m.dir);
    const ids: Uint32Array[] = [];
    for (const t of m.texts ?? []) {
      ids.push(Uint32Array.from(encodeWithCore(core, t, m.addSpecialTokens === true)));
    }
    const res: WorkerResponse = { id: m.id, ids };
    port.postMessage(
      res,
      ids.map((a) => a.buffer as ArrayBuffer),
    );
  } catch (e) {
    const res: WorkerResponse = {
      id: m.id,
      error: { code: isTokenizerError(e) ? e.code : "internal", message: (e as Error)?.message ?? String(e) },
    };
    port.postMessage(res);
  }
});
