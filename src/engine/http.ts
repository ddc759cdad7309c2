import { createServer } from "node:http";
import { sendJson } from "../util/http-json.ts";
import { closeServer, httpUrl, listen } from "../util/http-server.ts";
import type { MockEngine } from "./engine.ts";
import { HttpError } from "./http-request.ts";
import { engineRoutes } from "./routes.ts";

/**
 * The engine's node:http server: each request goes to its route (routes.ts); a handler's
 * HttpError (or any other error, as a 500) is answered as vLLM's ErrorResponse
 * `{"error":{"message","type","param","code"}}` and counted by status.
 */
export async function startHttpServer(
  engine: MockEngine,
  host: string,
  port: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const log = engine.log;
  const route = engineRoutes(engine);

  const server = createServer((req, res) => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://localhost");
    } catch {
      url = new URL("http://localhost/");
    }
    const fail = (err: unknown) => {
      const e =
        err instanceof HttpError
          ? err
          : new HttpError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`);
      engine.metrics.httpErrors.inc({ code: String(e.status) });
      if (e.status >= 500) log.error({ event: "http.error", path: url.pathname, err }, "request failed");
      else
        log.debug(
          { event: "http.client_error", path: url.pathname, status: e.status, msg: e.message },
          "bad request",
        );
      // after headers went out (a failing stream) sendJson only ends the response
      sendJson(res, e.status, {
        error: { message: e.message, type: e.type, param: e.param, code: e.status },
      });
    };
    try {
      const p = route(req.method ?? "GET", url.pathname)(req, res, url);
      if (p instanceof Promise) p.catch(fail);
    } catch (err) {
      fail(err);
    }
  });
  server.keepAliveTimeout = 65_000;
  const bound = await listen(server, port, host);
  return { url: httpUrl(host, bound), close: () => closeServer(server) };
}
