import type { ExplainResult } from "../gateway/planner.ts";
import { parseJsonBody, readBody } from "../gateway/request.ts";
import { sendJson } from "../util/http-json.ts";
import type { AdminRouteHandler } from "./admin.ts";

/** `POST /admin/route/explain` of the gateway's admin API: the planner's dry run for a request body. */
export function explainRoute(
  planner: { explain(body: Record<string, unknown>): Promise<ExplainResult> },
  maxBodyBytes: number,
): AdminRouteHandler {
  return async (req, res) => {
    const body = parseJsonBody(await readBody(req, maxBodyBytes));
    sendJson(res, 200, await planner.explain(body));
  };
}
