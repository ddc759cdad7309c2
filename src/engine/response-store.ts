/**
 * The mock engine's response store, as vLLM's (`VLLM_ENABLE_RESPONSES_API_STORE`): every
 * `/v1/responses` answer made with `store` (the default) is kept in this server's memory, so
 * `GET /v1/responses/{id}` returns it, `POST /v1/responses/{id}/cancel` stops a background one
 * still queued or in progress, and `previous_response_id` continues it. Bounded: the oldest
 * responses are forgotten first (then 404, as after a vLLM restart).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { sendJson } from "../util/http-json.ts";
import type { MockEngine } from "./engine.ts";
import { HttpError, type Json } from "./http-request.ts";

export interface StoredResponse {
  /** the response object as GET returns it (its status changes while a background one runs) */
  response: Json;
  /** the conversation so far as input items (a follow-up continues from it) */
  items: Json[];
  /** stops a background generation (null once it is over) */
  cancel: (() => void) | null;
}

const MAX_STORED = 1000;
const stores = new WeakMap<MockEngine, Map<string, StoredResponse>>();

export function responseStore(engine: MockEngine): Map<string, StoredResponse> {
  let s = stores.get(engine);
  if (s === undefined) {
    s = new Map();
    stores.set(engine, s);
  }
  return s;
}

export function storeResponse(engine: MockEngine, id: string, entry: StoredResponse): void {
  const s = responseStore(engine);
  s.delete(id);
  if (s.size >= MAX_STORED) {
    const oldest = s.keys().next().value;
    if (oldest !== undefined) s.delete(oldest);
  }
  s.set(id, entry);
}

/**
 * The prologue of GET and cancel: drains the request (neither reads a body) and applies vLLM's
 * checks: an id must begin with `resp` (400), and be in this server's store (404).
 */
function storedOf(engine: MockEngine, req: IncomingMessage, url: URL): StoredResponse {
  req.resume();
  const m = /^\/v1\/responses\/([^/]+)/.exec(url.pathname);
  const id = m === null ? "" : decodeURIComponent(m[1]);
  if (!id.startsWith("resp"))
    throw new HttpError(
      400,
      `Invalid 'response_id': '${id}'. Expected an ID that begins with 'resp'.`,
      "response_id",
    );
  const found = responseStore(engine).get(id);
  if (found === undefined) throw new HttpError(404, `Response with id '${id}' not found.`, "response_id");
  return found;
}

/** `GET /v1/responses/{id}` */
export function retrieveResponse(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
): void {
  sendJson(res, 200, storedOf(engine, req, url).response);
}

/** `POST /v1/responses/{id}/cancel`: only a background response still running can be cancelled. */
export function cancelResponse(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
): void {
  const found = storedOf(engine, req, url);
  const status = found.response.status;
  if (status !== "queued" && status !== "in_progress")
    throw new HttpError(400, "Cannot cancel a synchronous response.", null);
  found.response = { ...found.response, status: "cancelled" };
  found.cancel?.();
  found.cancel = null;
  sendJson(res, 200, found.response);
}
