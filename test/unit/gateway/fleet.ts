/** Test fleet: in-process mock engines behind a real gateway, and small helpers. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { type RunningEngine, type StartOptions, startEngine } from "../../../src/engine/start.ts";
import { type RunningGateway, type StartGatewayOptions, startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";

export const MODEL = "Qwen/Qwen3-0.6B";

export interface Fleet {
  engines: RunningEngine[];
  pods: PodInfo[];
  gw: RunningGateway;
  close(): Promise<void>;
}

export function engineOptions(extra: StartOptions = {}): StartOptions {
  return {
    host: "127.0.0.1",
    port: 0,
    eventsEndpoint: "tcp://127.0.0.1:*",
    replayEndpoint: "tcp://127.0.0.1:*",
    numGpuBlocks: 512,
    speed: 20,
    minOutputTokens: 4,
    maxOutputTokens: 8,
    log: silentLogger(),
    ...extra,
  };
}

export function podOf(name: string, e: RunningEngine, extra: Partial<PodInfo> = {}): PodInfo {
  return {
    name,
    model: MODEL,
    loras: [],
    http: e.httpUrl,
    events: e.eventsEndpoint,
    replay: e.replayEndpoint,
    dataParallelSize: 1,
    ready: true,
    ...extra,
  };
}

/** Start `n` engines and a gateway routing to them; waits until every event stream is live. */
export async function startFleet(
  n: number,
  gwOpts: Partial<StartGatewayOptions> = {},
  engOpts: StartOptions = {},
): Promise<Fleet> {
  const engines: RunningEngine[] = [];
  try {
    for (let i = 0; i < n; i++) engines.push(await startEngine(engineOptions(engOpts)));
  } catch (err) {
    await Promise.all(engines.map((e) => e.close()));
    throw err;
  }
  const pods = engines.map((e, i) => podOf(`pod-${i}`, e));
  let gw: RunningGateway;
  try {
    gw = await startGateway({ pods, tokenizerPool: false, log: silentLogger(), ...gwOpts });
  } catch (err) {
    await Promise.all(engines.map((e) => e.close()));
    throw err;
  }
  const fleet: Fleet = {
    engines,
    pods,
    gw,
    close: async () => {
      await gw.close();
      await Promise.all(engines.map((e) => e.close()));
    },
  };
  if (gwOpts.subscribe !== false) {
    await waitFor("every event stream live", () =>
      pods.every((p) => gw.subscribers?.status(p.name)?.state === "live"),
    ).catch(async (err) => {
      await fleet.close();
      throw err;
    });
  }
  return fleet;
}

/**
 * A scripted HTTP "pod" for failure tests; `handler` decides what each request gets, except the
 * gateway's `GET /health` probes, which it answers 200 like a live engine.
 */
export async function startFakePod(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  healthy: () => boolean = () => true,
): Promise<{ url: string; server: Server; requests: number; close(): Promise<void> }> {
  const state = { requests: 0 };
  const server = createServer((req, res) => {
    // the gateway's health probe: answered like an engine's (200, or 503 while `healthy` says
    // no), not counted, never passed to the handler
    if (req.method === "GET" && req.url === "/health") {
      res.writeHead(healthy() ? 200 : 503).end();
      return;
    }
    state.requests++;
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    server,
    get requests() {
      return state.requests;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A port nothing listens on (bound then released). */
export async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export function fakePodInfo(name: string, url: string, extra: Partial<PodInfo> = {}): PodInfo {
  return {
    name,
    model: MODEL,
    loras: [],
    http: url,
    events: null,
    replay: null,
    dataParallelSize: 1,
    ready: true,
    ...extra,
  };
}

/** A parsed JSON response body, read field by field in assertions. */
// biome-ignore lint/suspicious/noExplicitAny: test bodies are probed field by field and asserted
export type Json = any;

export async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; json: Json; text: string }> {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: r.status, headers: r.headers, json, text };
}

/** Sum of a metric's series whose labels include every `labels` pair. */
export async function metricValue(
  gw: RunningGateway,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await gw.registry.metrics();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}
