import { loadTokenizer } from "../tokenize/hf-tokenizer.ts";
import type { Tokenizer } from "../tokenize/types.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { MockEngine } from "./engine.ts";
import { startHttpServer } from "./http.ts";
import { DEFAULT_ENGINE_OPTIONS, type EngineOptions, validateOptions } from "./options.ts";
import { offsetEndpoint, pubShouldBind, withHost } from "./publisher.ts";

/**
 * Start-up of mock engines in this process: options → tokenizer → engine → HTTP server, and N
 * replicas on shifted ports / hosts. Kept apart from MockEngine so the engine does not depend
 * on its HTTP surface (the HTTP handlers depend on the engine).
 */

const tokenizers = new Map<string, Promise<Tokenizer>>();

/** Tokenizers are loaded once per process and shared by every engine/replica. */
export function sharedTokenizer(model: string, dir: string | null): Promise<Tokenizer> {
  const key = `${model}\u0000${dir ?? ""}`;
  let t = tokenizers.get(key);
  if (t === undefined) {
    t = loadTokenizer(model, dir ?? undefined);
    tokenizers.set(key, t);
    t.catch(() => tokenizers.delete(key));
  }
  return t;
}

export interface RunningEngine {
  httpUrl: string;
  /** events PUB endpoint of rank 0 (null when events are off) */
  eventsEndpoint: string | null;
  replayEndpoint: string | null;
  /** per data-parallel rank */
  eventsEndpoints: Array<string | null>;
  replayEndpoints: Array<string | null>;
  engine: MockEngine;
  close(): Promise<void>;
}

export type StartOptions = Partial<EngineOptions> & { log?: Logger; replicaIndex?: number };

/** Start one engine (all its DP ranks and its HTTP server) in this process. */
export async function startEngine(opts: StartOptions = {}): Promise<RunningEngine> {
  const { log: givenLog, replicaIndex = 0, ...rest } = opts;
  const o: EngineOptions = { ...DEFAULT_ENGINE_OPTIONS, ...rest };
  validateOptions(o);
  const log = givenLog ?? createLogger("mock-engine");
  const tokenizer = await sharedTokenizer(o.model, o.tokenizer);
  const engine = new MockEngine(o, tokenizer, log, replicaIndex);
  let server: Awaited<ReturnType<typeof startHttpServer>> | null = null;
  try {
    await engine.init();
    server = await startHttpServer(engine, o.host, o.port);
  } catch (err) {
    await engine.close();
    throw err;
  }
  const srv = server;
  const eventsEndpoints = engine.ranks.map((r) => r.publisher?.eventsEndpoint ?? null);
  const replayEndpoints = engine.ranks.map((r) => r.publisher?.replayEndpoint ?? null);
  log.info(
    {
      event: "engine.started",
      http: srv.url,
      events: eventsEndpoints,
      replay: replayEndpoints,
      model: o.model,
      loras: o.loraModules,
      blockSize: o.blockSize,
      numGpuBlocks: o.numGpuBlocks,
      numCpuBlocks: o.numCpuBlocks,
      dataParallelSize: o.dataParallelSize,
      hashFormat: o.hashFormat,
      eventFormat: o.eventFormat,
      flavor: o.flavor,
      hashSeeded: o.hashSeed !== null,
    },
    "mock engine started",
  );
  let closing: Promise<void> | null = null;
  return {
    httpUrl: srv.url,
    eventsEndpoint: eventsEndpoints[0],
    replayEndpoint: replayEndpoints[0],
    eventsEndpoints,
    replayEndpoints,
    engine,
    close() {
      closing ??= (async () => {
        await srv.close();
        await engine.close();
        log.info({ event: "engine.stopped", http: srv.url }, "mock engine stopped");
      })();
      return closing;
    },
  };
}

export type ReplicaOptions = StartOptions & {
  replicas?: number;
  /** every port (HTTP, events, replay) of replica i is offset by i * portStride */
  portStride?: number;
  /** replica i binds HTTP and ZMQ on hosts[i] */
  hosts?: string[];
};

/** Per-replica options: port + i*stride, host i. */
export function replicaOptions(opts: ReplicaOptions, i: number): StartOptions {
  const { replicas: _r, portStride = 0, hosts, ...base } = opts;
  const o: StartOptions = { ...base, replicaIndex: i };
  const shift = i * portStride;
  const host = hosts?.[i];
  if (o.port !== undefined && o.port !== 0) o.port += shift;
  else if (o.port === undefined) o.port = DEFAULT_ENGINE_OPTIONS.port + shift;
  const ep = (e: string | null | undefined, d: string | null): string | null => {
    const v = e === undefined ? d : e;
    if (v === null) return null;
    const shifted = offsetEndpoint(v, shift);
    return host === undefined ? shifted : withHost(shifted, host);
  };
  const events =
    opts.eventsEndpoint === undefined ? DEFAULT_ENGINE_OPTIONS.eventsEndpoint : opts.eventsEndpoint;
  // the bind/connect decision is made on the endpoint as given ("tcp://*:5557" binds), before
  // the replica's host replaces the wildcard
  if (host !== undefined && events !== null && (opts.eventsBind ?? null) === null) {
    o.eventsBind = pubShouldBind(events);
  }
  o.eventsEndpoint = ep(opts.eventsEndpoint, DEFAULT_ENGINE_OPTIONS.eventsEndpoint);
  o.replayEndpoint = ep(opts.replayEndpoint, DEFAULT_ENGINE_OPTIONS.replayEndpoint);
  if (host !== undefined) o.host = host;
  return o;
}

/** Start N independent engines in this process (replica i on every port + i*stride / host i). */
export async function startEngines(opts: ReplicaOptions): Promise<RunningEngine[]> {
  const n = opts.replicas ?? opts.hosts?.length ?? 1;
  if (!Number.isInteger(n) || n < 1) throw new Error("replicas must be >= 1");
  if (opts.hosts !== undefined && opts.hosts.length < n)
    throw new Error(`--hosts lists ${opts.hosts.length} hosts for ${n} replicas`);
  const stride = opts.portStride ?? 0;
  if (n > 1 && stride === 0 && opts.hosts === undefined && opts.port !== 0) {
    throw new Error("several replicas need --port-stride > 0, --hosts, or ephemeral ports");
  }
  const log = opts.log ?? createLogger("mock-engine");
  const out: RunningEngine[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const ro = replicaOptions(opts, i);
      ro.log = n > 1 ? log.child({ replica: i }) : log;
      out.push(await startEngine(ro));
    }
  } catch (err) {
    await Promise.all(out.map((e) => e.close()));
    throw err;
  }
  return out;
}
