/**
 * The admin dashboard's page and assets: `GET /` (the page), `GET /dashboard/<file>` (its script
 * and style, and uPlot's, served from node_modules). Plain files, no build step: the page is
 * web/dashboard/ of the package (two folders up from both src/admin/ and dist/admin/), read once
 * and kept in memory. Nothing is loaded from elsewhere, so the page works offline.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { GatewayError } from "../gateway/errors.ts";
import type { AdminRouteHandler } from "./types.ts";

interface Asset {
  body: Buffer;
  type: string;
}

const JS = "text/javascript; charset=utf-8";
const CSS = "text/css; charset=utf-8";
const HTML = "text/html; charset=utf-8";

const require_ = createRequire(import.meta.url);
const web = (name: string) => fileURLToPath(new URL(`../../web/dashboard/${name}`, import.meta.url));

/** file name under /dashboard/ → where it is on disk and its content type */
const FILES: Record<string, { path: () => string; type: string }> = {
  "index.html": { path: () => web("index.html"), type: HTML },
  "app.js": { path: () => web("app.js"), type: JS },
  "app.css": { path: () => web("app.css"), type: CSS },
  "uplot.js": { path: () => require_.resolve("uplot/dist/uPlot.iife.min.js"), type: JS },
  "uplot.css": { path: () => require_.resolve("uplot/dist/uPlot.min.css"), type: CSS },
};

// the page runs only its own files; uPlot sets inline styles on its elements
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const cache = new Map<string, Asset>();

function asset(name: string): Asset | null {
  const known = FILES[name];
  if (!known) return null;
  let a = cache.get(name);
  if (!a) {
    a = { body: readFileSync(known.path()), type: known.type };
    cache.set(name, a);
  }
  return a;
}

function serve(name: string): AdminRouteHandler {
  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD")
      throw new GatewayError(405, "invalid_request_error", "method_not_allowed", "use GET");
    const a = asset(name);
    if (!a) throw new GatewayError(404, "invalid_request_error", "not_found", `no dashboard file ${name}`);
    res.writeHead(200, {
      "content-type": a.type,
      "content-length": a.body.length,
      "cache-control": "no-cache",
      "x-content-type-options": "nosniff",
      "content-security-policy": CSP,
    });
    res.end(req.method === "HEAD" ? undefined : a.body);
  };
}

/** The dashboard's routes: [path, handler]. */
export function dashboardRoutes(): Array<[string, AdminRouteHandler]> {
  const routes: Array<[string, AdminRouteHandler]> = [["/", serve("index.html")]];
  for (const name of Object.keys(FILES)) routes.push([`/dashboard/${name}`, serve(name)]);
  return routes;
}
