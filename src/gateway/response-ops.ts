/**
 * `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: vLLM keeps a stored response in
 * the memory of the server that made it, so both go to the pod that answered the `/v1/responses`
 * request with that id (affinity.ts, learned from its JSON answer or its stream's final event).
 * An id the gateway never saw, or whose pod has left the fleet, is an OpenAI-style 404 here:
 * any other pod would only answer the same. The pod's answer (JSON, an error, or the SSE replay
 * of `?stream=true`) is relayed as it comes, status and content type included.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { PodInfo } from "../discovery/types.ts";
import type { Logger } from "../util/log.ts";
import type { ResponseAffinity } from "./affinity.ts";
import { GatewayError } from "./errors.ts";
import { originOf } from "./health.ts";
import type { RequestCtx } from "./proxy.ts";
import { readBody } from "./request.ts";
import { classifyUpstreamError, type UpstreamPools } from "./upstream.ts";

export interface ResponseOpsOptions {
  affinity: Pick<ResponseAffinity, "podOf">;
  pods: { pods(): PodInfo[] };
  pools: Pick<UpstreamPools, "get">;
  maxBodyBytes: number;
  log: Logger;
}

/** The response id of `/v1/responses/{id}` or `/v1/responses/{id}/cancel`, else null. */
export function responseIdOf(path: string): string | null {
  const m = /^\/v1\/responses\/([^/]+)(?:\/cancel)?$/.exec(path);
  if (m === null) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

const notFound = (id: string) =>
  new GatewayError(
    404,
    "invalid_request_error",
    "response_not_found",
    `Response with id '${id}' not found.`,
    "response_id",
  );

/** Headers worth passing on to the pod (auth, tracing, what the client accepts). */
const FORWARDED = ["authorization", "x-request-id", "accept", "content-type"] as const;

export async function relayResponseOp(
  o: ResponseOpsOptions,
  req: IncomingMessage,
  res: ServerResponse,
  ctx: RequestCtx,
  path: string,
): Promise<void> {
  const id = responseIdOf(path);
  // a POST may carry a (small) body; read it before answering so the connection stays usable
  const body = req.method === "POST" ? await readBody(req, o.maxBodyBytes) : null;
  if (req.method !== "POST") req.resume();
  if (id === null) throw notFound(path);
  const owner = o.affinity.podOf(id);
  const pod = owner === undefined ? undefined : o.pods.pods().find((p) => p.name === owner);
  if (pod === undefined) throw notFound(id);
  ctx.pod = pod.name;
  const headers: Record<string, string> = {};
  for (const h of FORWARDED) {
    const v = req.headers[h];
    if (typeof v === "string") headers[h] = v;
  }
  const url = req.url ?? path;
  const ac = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) ac.abort();
  };
  res.once("close", onClose);
  let up: Awaited<ReturnType<ReturnType<UpstreamPools["get"]>["request"]>>;
  try {
    up = await o.pools.get(originOf(pod.http)).request({
      path: url.slice(url.indexOf("/v1/")),
      method: req.method === "POST" ? "POST" : "GET",
      headers,
      body: body !== null && body.length > 0 ? body : undefined,
      signal: ac.signal,
    });
  } catch (err) {
    res.off("close", onClose);
    if (ac.signal.aborted) throw new GatewayError(499, "client_closed", "client_closed", "client went away");
    const kind = classifyUpstreamError(err);
    o.log.warn(
      { event: "gateway.response_op_failed", pod: pod.name, id, kind, err: String(err) },
      "pod failed",
    );
    throw new GatewayError(502, "server_error", "upstream_failed", `pod ${pod.name} failed: ${kind}`);
  }
  const out: Record<string, string> = { "x-kvsync-pod": pod.name };
  const ct = up.headers["content-type"];
  if (typeof ct === "string") out["content-type"] = ct;
  if (typeof ct === "string" && ct.startsWith("text/event-stream")) out["cache-control"] = "no-cache";
  res.writeHead(up.statusCode, out);
  try {
    for await (const chunk of up.body) res.write(chunk);
    res.end();
  } catch {
    // the client or the pod went away mid-answer: nothing more can be said on this response
    res.destroy();
  } finally {
    res.off("close", onClose);
  }
}
