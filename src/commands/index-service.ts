/**
 * `kvsync index --engines <file> --admin-port P [--admin-host 127.0.0.1]`: the standalone sync
 * prefix index. Discovery (the engines file, watched; or Kubernetes) → one subscriber per engine
 * stream → the index; the admin API on host:port.
 *
 * `startIndexService()` is the same thing as a function (tests, embedding).
 */
import { createServer, type Server } from "node:http";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { Registry } from "prom-client";
import { type AdminHandler, createAdminHandler } from "../admin/admin.ts";
import { addDiscoveryOptions, type DiscoveryOptions, discoveryOptionsFrom } from "../discovery/index.ts";
import type { PodSet } from "../discovery/pod-set.ts";
import type { DiscoverySource } from "../discovery/types.ts";
import { Fleet } from "../events/fleet.ts";
import type { SubscriberManager, SubscriberManagerOptions } from "../events/manager.ts";
import type { ReadinessOptions } from "../events/readiness.ts";
import type { SyncIndexOptions } from "../index/index.ts";
import type { PrefixIndex } from "../index/types.ts";
import { registryLookup } from "../tokenize/lookup.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { collect, opt, parseIntArg } from "../util/cli-options.ts";
import { closeServer, httpUrl, listen } from "../util/http-server.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { type ProcessWatchOptions, startProcessWatch } from "../util/process-watch.ts";
import { addIndexOptions, indexOptionsFrom } from "./index-options.ts";
import {
  addSignalOptions,
  addStreamHealthOptions,
  signalOptionsFrom,
  streamHealthFrom,
} from "./stream-options.ts";

export interface IndexServiceOptions {
  /** a discovery source, or options for one (`engines` = the engines file) */
  discovery: DiscoverySource | DiscoveryOptions;
  adminHost?: string;
  /** 0 = ephemeral */
  adminPort?: number;
  index?: SyncIndexOptions;
  subscriber?: SubscriberManagerOptions["subscriber"];
  lag?: SubscriberManagerOptions["lag"];
  /** watch the process's event-loop delay and wall clock */
  processWatch?: ProcessWatchOptions | false;
  /** when /readyz stops waiting for an event stream (readiness.ts) */
  readiness?: Pick<ReadinessOptions, "streamTimeoutMs">;
  topic?: string;
  /** `--tokenizer` specs (the default model's bundled tokenizer is always there), or false */
  tokenizers?: string[] | false;
  defaultBlockSize?: number;
  registry?: Registry;
  log?: Logger;
}

export interface IndexService {
  url: string;
  port: number;
  index: PrefixIndex;
  manager: SubscriberManager;
  pods: PodSet;
  registry: Registry;
  admin: AdminHandler;
  close(): Promise<void>;
}

export async function startIndexService(opts: IndexServiceOptions): Promise<IndexService> {
  const log = opts.log ?? createLogger("index");
  const registry = opts.registry ?? new Registry();
  const fleet = new Fleet({
    discovery: opts.discovery,
    indexOptions: opts.index,
    topic: opts.topic,
    subscriber: opts.subscriber,
    lag: opts.lag,
    readiness: opts.readiness,
    registry,
    log,
  });
  const { index, pods } = fleet;
  const manager = fleet.subscribers!;
  // /healthz reports the loop delay either way; metrics and warnings only when asked for
  const processWatch = opts.processWatch
    ? startProcessWatch(registry, log, opts.processWatch)
    : startProcessWatch(null, log, { eventLoopWarnMs: 0, clockJumpWarnMs: 0 });
  const tokenizers =
    opts.tokenizers === false ? undefined : TokenizerRegistry.fromSpecs(opts.tokenizers ?? []);
  let started = false;
  let closing = false;
  const admin = createAdminHandler({
    index,
    manager,
    registry,
    pods,
    tokenizer: tokenizers && registryLookup(tokenizers),
    ready: () => {
      const r = fleet.readiness.check();
      return { ...r, ready: started && !closing && r.ready };
    },
    process: () => ({ eventLoopDelayMs: processWatch.loopDelay() }),
    defaultBlockSize: opts.defaultBlockSize,
    log,
  });
  const server: Server = createServer((req, res) => {
    void admin(req, res);
  });
  const cleanup = async () => {
    closing = true;
    await closeServer(server);
    processWatch.stop();
    await fleet.close();
    await tokenizers?.close();
  };
  try {
    await fleet.start();
    started = true;
    const host = opts.adminHost ?? "127.0.0.1";
    const port = await listen(server, opts.adminPort ?? 0, host);
    const url = httpUrl(host, port);
    log.info({ event: "index.started", url, discovery: fleet.discoveryKind }, "index admin API listening");
    let closed: Promise<void> | null = null;
    return {
      url,
      port,
      index,
      manager,
      pods,
      registry,
      admin,
      close: () => {
        closed ??= cleanup();
        return closed;
      },
    };
  } catch (err) {
    await cleanup().catch(() => undefined);
    throw err;
  }
}

function port(v: string): number {
  const n = parseIntArg(v);
  if (n < 0 || n > 65535) throw new InvalidArgumentError(`not a port: ${v}`);
  return n;
}

function positive(v: string): number {
  const n = parseIntArg(v);
  if (n < 1) throw new InvalidArgumentError(`must be >= 1: ${v}`);
  return n;
}

export function register(program: Command): void {
  const cmd = program
    .command("index")
    .description("run the sync prefix index: subscribe to every engine's KV events, serve the admin API");
  addDiscoveryOptions(cmd);
  addStreamHealthOptions(cmd);
  addSignalOptions(cmd);
  addIndexOptions(cmd);
  cmd
    .addOption(
      opt("--admin-port <port>", "admin API port (0 = ephemeral)", "KVSYNC_ADMIN_PORT", 8081).argParser(port),
    )
    .addOption(opt("--admin-host <host>", "admin API bind address", "KVSYNC_ADMIN_HOST", "127.0.0.1"))
    .addOption(
      opt("--block-size <n>", "block size when an engine's is not known", "KVSYNC_BLOCK_SIZE", 16).argParser(
        positive,
      ),
    )
    .addOption(
      opt(
        "--tokenizer <spec>",
        "tokenizer for match requests with a prompt: <model>=<dir>|remote|remote:<url> (repeatable)",
        "KVSYNC_TOKENIZER",
      ).argParser(collect),
    )
    .action(async (o: Record<string, unknown>) => {
      const log = createLogger("index");
      const tok = o.tokenizer;
      const svc = await startIndexService({
        discovery: discoveryOptionsFrom(o),
        adminHost: o.adminHost as string,
        adminPort: o.adminPort as number,
        topic: o.topic as string,
        index: indexOptionsFrom(o),
        subscriber: { replayTimeoutMs: o.replayTimeoutMs as number, ...streamHealthFrom(o) },
        ...signalOptionsFrom(o),
        tokenizers: Array.isArray(tok) ? tok : typeof tok === "string" ? [tok] : [],
        defaultBlockSize: o.blockSize as number,
        log,
      });
      // one line on stdout for scripts: where the admin API is
      process.stdout.write(`${JSON.stringify({ event: "index.started", url: svc.url, port: svc.port })}\n`);
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
      log.info({ event: "index.stopping" }, "stopping");
      await svc.close();
      process.exit(0);
    });
}
