import type { ServerResponse } from "node:http";
import { sendJson } from "../util/http-json.ts";

/** OpenAI's error body: `{"error":{"message","type","param","code"}}`. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class GatewayError extends Error {
  override readonly name = "GatewayError";
  constructor(
    readonly status: number,
    readonly type: string,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }

  body(): OpenAiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (code: string, message: string, param: string | null = null) =>
  new GatewayError(400, "invalid_request_error", code, message, param);
export const notFound = (message: string) =>
  new GatewayError(404, "invalid_request_error", "model_not_found", message, "model");
export const tooLarge = (limit: number) =>
  new GatewayError(413, "invalid_request_error", "request_too_large", `request body exceeds ${limit} bytes`);
export const noReadyPod = (model: string) =>
  new GatewayError(
    503,
    "service_unavailable",
    "no_ready_pod",
    `no ready pod serves model ${JSON.stringify(model)}`,
  );
export const noHealthyPod = (model: string, pods: number) =>
  new GatewayError(
    503,
    "service_unavailable",
    "no_healthy_pod",
    `every pod serving model ${JSON.stringify(model)} (${pods}) is out of rotation: failing health checks`,
  );
export const upstreamFailed = (message: string) =>
  new GatewayError(502, "upstream_error", "upstream_error", message);
export const upstreamTimeout = (message: string) =>
  new GatewayError(504, "upstream_error", "upstream_timeout", message);

export function sendError(
  res: ServerResponse,
  err: GatewayError,
  headers: Record<string, string> = {},
): void {
  sendJson(res, err.status, err.body(), headers);
}
