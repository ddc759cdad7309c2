import type { IncomingMessage, ServerResponse } from "node:http";
import { formText, parseForm } from "../util/form-data.ts";
import { readBody } from "../util/http-body.ts";
import { sendJson } from "../util/http-json.ts";
import type { MockEngine } from "./engine.ts";
import { HttpError, modelOf } from "./http-request.ts";

/**
 * `POST /v1/audio/transcriptions` and `/v1/audio/translations` in vLLM's shapes: a
 * multipart form with `file` and `model`; the answer `{"text", "usage": {"type": "duration",
 * "seconds"}}` (or the bare text for `response_format: text`). The mock hears nothing: the text
 * is a few words chosen from the file's length, and the duration assumes 16 kHz 16-bit mono.
 * Speech models run an encoder outside the prefix cache, so these requests publish no KV events.
 */
export async function audio(engine: MockEngine, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const limit = engine.o.maxBodyBytes;
  const buf = await readBody(req, limit, {
    tooLarge: () => new HttpError(413, `request body exceeds ${limit} bytes`),
    closed: () => new HttpError(499, "client closed the request"),
  });
  const ctype = String(req.headers["content-type"] ?? "");
  if (!ctype.startsWith("multipart/form-data"))
    throw new HttpError(400, "the audio endpoints take multipart/form-data");
  let form: FormData;
  try {
    form = await parseForm(buf, ctype);
  } catch (err) {
    throw new HttpError(400, `bad multipart body: ${(err as Error).message}`);
  }
  const file = form.get("file");
  if (file === null || typeof file === "string") throw new HttpError(400, "file is required", "file");
  modelOf(engine, { model: formText(form, "model") ?? undefined });
  const bytes = file.size;
  const words = ["the", "sound", "of", "one", "file", "with", "many", "words", "in", "it"];
  const n = 3 + (bytes % 7);
  const text = Array.from({ length: n }, (_, i) => words[(bytes + i * 3) % words.length]).join(" ");
  if (formText(form, "response_format") === "text") {
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    res.end(text);
    return;
  }
  sendJson(res, 200, { text, usage: { type: "duration", seconds: Math.max(1, Math.ceil(bytes / 32_000)) } });
}
