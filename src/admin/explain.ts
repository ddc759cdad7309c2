import type { ExplainResult } from "../gateway/planner.ts";
import { parseJsonBody, readBody } from "../gateway/request.ts";
import { sendJson } from "../util/http-json.ts";
import type { AdminRouteHandler } from "./admin.ts";

/**
 * `POST /admin/route/explain` of the gateway's admin API: the planner's dry run for a request
 * body. `?endpoint=/v1/embeddings` (any API path the gateway forwards): the body is that
 * endpoint's request body, parsed and routed as the endpoint would.
 */
export function explainRoute(
  planner: { explain(body: Record<string, unknown>, endpoint: string | null): Promise<ExplainResult> },
  maxBodyBytes: number,
): AdminRouteHandler {
  return async (req, res) => {
    const endpoint = new URL(req.url ?? "/", "http://x").searchParams.get("endpoint");
    const body = parseJsonBody(await readBody(req, maxBodyBytes));
    sendJson(res, 200, await planner.explain(body, endpoint));
  };
}
