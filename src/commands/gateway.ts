import type { Command } from "commander";
import { addDiscoveryOptions, discoveryOptionsFrom } from "../discovery/index.ts";
import { startGateway } from "../gateway/gateway.ts";
import { HEALTH_DEFAULTS } from "../gateway/health.ts";
import { PRESSURE_DEFAULTS } from "../gateway/pod-pressure.ts";
import { DEFAULT_BLOCK_SIZE, GATEWAY_DEFAULTS } from "../gateway/server.ts";
import { KV_AWARE_DEFAULTS } from "../routing/kv-aware.ts";
import { PREFIX_APPROX_DEFAULTS } from "../routing/prefix-approx.ts";
import { POLICY_NAMES, type PolicyName } from "../routing/types.ts";
import { collect, flagOpt, opt, parseChoice, parseFloatArg, parseIntArg } from "../util/cli-options.ts";
import { createLogger } from "../util/log.ts";
import { addClusterOptions, type ClusterCliOptions, clusterOptionsFrom } from "./cluster-options.ts";
import { addFeedbackOptions, type FeedbackCliOptions, feedbackOptionsFrom } from "./feedback-options.ts";
import { addIndexOptions, indexOptionsFrom } from "./index-options.ts";
import { addMatchWatchOptions, matchWatchFrom } from "./match-watch-options.ts";
import {
  addSignalOptions,
  addStreamHealthOptions,
  signalOptionsFrom,
  streamHealthFrom,
} from "./stream-options.ts";

const parsePolicy = parseChoice(POLICY_NAMES);

function parseList(v: string, prev: string[] | undefined): string[] {
  return collect(v, prev).flatMap((s) =>
    s
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x !== ""),
  );
}

interface GatewayCliOptions extends ClusterCliOptions, FeedbackCliOptions {
  host: string;
  port: number;
  adminHost: string;
  adminPort: number;
  policy: PolicyName;
  tokenizer?: string[];
  tokenizerPool: boolean;
  blockSize: number;
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  firstByteTimeoutMs: number;
  bodyTimeoutMs: number;
  healthChecks: boolean;
  healthProbeIntervalMs: number;
  healthProbeTimeoutMs: number;
  healthUnhealthyProbes: number;
  healthUnhealthyFailures: number;
  maxBodyBytes: number;
  connectionsPerPod: number;
  scrapeEngineMetrics: boolean;
  scrapeIntervalMs: number;
  podPressureRatio: number;
  gpuWeight: number;
  cpuWeight: number;
  storageWeight: number;
  runningRequestCost: number;
  waitingRequestTokens: number;
  kvUsageWatermark: number;
  kvUsagePenalty: number;
  drainQueue: boolean;
  workSlack: number;
  prefixTtlMs: number;
  prefixMaxBlocks: number;
  prefixBlockSize?: number;
  prefixMatchThreshold: number;
  balanceAbsThreshold: number;
  balanceRelThreshold: number;
  seed: number;
  maxEntries?: number;
  maxEntriesPerStream?: number;
  indexInitialEntries?: number;
  topic: string;
  replayTimeoutMs: number;
}

export function register(program: Command): void {
  const K = KV_AWARE_DEFAULTS;
  const P = PREFIX_APPROX_DEFAULTS;
  const G = GATEWAY_DEFAULTS;
  const H = HEALTH_DEFAULTS;
  const cmd = program
    .command("gateway")
    .description("KV-cache-aware OpenAI-compatible gateway in front of vLLM engines");
  addDiscoveryOptions(cmd);
  addStreamHealthOptions(cmd);
  addSignalOptions(cmd);
  cmd
    .addOption(opt("--host <host>", "OpenAI API bind host", "KVSYNC_HOST", "0.0.0.0"))
    .addOption(opt("--port <n>", "OpenAI API port", "KVSYNC_PORT", 8080).argParser(parseIntArg))
    .addOption(opt("--admin-host <host>", "admin API bind host", "KVSYNC_ADMIN_HOST", "127.0.0.1"))
    .addOption(opt("--admin-port <n>", "admin API port", "KVSYNC_ADMIN_PORT", 8081).argParser(parseIntArg))
    .addOption(
      opt(
        "--policy <name>",
        `routing policy: ${POLICY_NAMES.join(" | ")}`,
        "KVSYNC_POLICY",
        "kv-aware",
      ).argParser(parsePolicy),
    )
    .addOption(
      opt(
        "--tokenizer <model=dir|remote>",
        "tokenizer per model (repeatable or comma-separated); the default model's is bundled",
        "KVSYNC_TOKENIZER",
      ).argParser(parseList),
    )
    .addOption(
      flagOpt(
        "--tokenizer-pool",
        "tokenize long prompts in a worker pool (false: on the main thread)",
        "KVSYNC_TOKENIZER_POOL",
        true,
      ),
    )
    .addOption(
      opt(
        "--block-size <n>",
        "engine block size when a pod does not declare one",
        "KVSYNC_BLOCK_SIZE",
        DEFAULT_BLOCK_SIZE,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--connect-timeout-ms <n>",
        "upstream connect timeout",
        "KVSYNC_CONNECT_TIMEOUT_MS",
        G.connectTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--headers-timeout-ms <n>",
        "upstream response-headers timeout (504 beyond)",
        "KVSYNC_HEADERS_TIMEOUT_MS",
        G.headersTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--first-byte-timeout-ms <n>",
        "streaming requests: upstream response-headers timeout (504 beyond; engines answer them at once)",
        "KVSYNC_FIRST_BYTE_TIMEOUT_MS",
        G.firstByteTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      flagOpt(
        "--health-checks",
        "per-pod health signal: probes and request failures take pods out of rotation",
        "KVSYNC_HEALTH_CHECKS",
        true,
      ),
    )
    .addOption(
      opt(
        "--health-probe-interval-ms <n>",
        "period of the GET /health probe of every pod",
        "KVSYNC_HEALTH_PROBE_INTERVAL_MS",
        H.probeIntervalMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--health-probe-timeout-ms <n>",
        "a probe unanswered after this long failed",
        "KVSYNC_HEALTH_PROBE_TIMEOUT_MS",
        H.probeTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--health-unhealthy-probes <n>",
        "consecutive failed probes that take a pod out of rotation",
        "KVSYNC_HEALTH_UNHEALTHY_PROBES",
        H.unhealthyAfterProbes,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--health-unhealthy-failures <n>",
        "consecutive failed requests (connect, reset, first-byte timeout) that take a pod out",
        "KVSYNC_HEALTH_UNHEALTHY_FAILURES",
        H.unhealthyAfterFailures,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--pod-slow-ratio <x>",
        "a pod whose time-to-first-byte upper quartile (3 s window) is this many times the fleet's logs gateway.pod_slow (0 = off)",
        "KVSYNC_POD_SLOW_RATIO",
        H.slowness.ratio,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--pod-slow-ms <n>",
        "...and at least this many ms above the fleet's",
        "KVSYNC_POD_SLOW_MS",
        H.slowness.minExcessMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--body-timeout-ms <n>",
        "longest upstream pause between body chunks",
        "KVSYNC_BODY_TIMEOUT_MS",
        G.bodyTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-body-bytes <n>",
        "largest request body (413 beyond)",
        "KVSYNC_MAX_BODY_BYTES",
        G.maxBodyBytes,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--connections-per-pod <n>",
        "max upstream connections per pod",
        "KVSYNC_CONNECTIONS_PER_POD",
        G.connectionsPerPod,
      ).argParser(parseIntArg),
    )
    .addOption(
      flagOpt(
        "--scrape-engine-metrics",
        "poll engines' /metrics (queue, running, KV usage) for kv-aware",
        "KVSYNC_SCRAPE_ENGINE_METRICS",
      ),
    )
    .addOption(
      opt(
        "--scrape-interval-ms <n>",
        "engine /metrics poll period",
        "KVSYNC_SCRAPE_INTERVAL_MS",
        G.scrapeIntervalMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--pod-pressure-ratio <x>",
        "with --scrape-engine-metrics: a pod whose container waits for CPU, memory or IO this share of the time (PSI, cAdvisor's container_pressure_*) logs gateway.pod_pressure (0 = off)",
        "KVSYNC_POD_PRESSURE_RATIO",
        PRESSURE_DEFAULTS.ratio,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--gpu-weight <x>",
        "kv-aware: share of prefill saved by a GPU block",
        "KVSYNC_GPU_WEIGHT",
        K.gpuWeight,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--cpu-weight <x>",
        "kv-aware: share saved by a CPU-tier block",
        "KVSYNC_CPU_WEIGHT",
        K.cpuWeight,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--storage-weight <x>",
        "kv-aware: share saved by a storage-tier block",
        "KVSYNC_STORAGE_WEIGHT",
        K.storageWeight,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--running-request-cost <tokens>",
        "kv-aware: token-equivalents each running request adds",
        "KVSYNC_RUNNING_REQUEST_COST",
        K.runningRequestCost,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--waiting-request-tokens <tokens>",
        "kv-aware: tokens assumed per engine-reported waiting request (scrape)",
        "KVSYNC_WAITING_REQUEST_TOKENS",
        K.waitingRequestTokens,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--kv-usage-watermark <x>",
        "kv-aware: KV usage (0..1) above which a pod is penalised (scrape)",
        "KVSYNC_KV_USAGE_WATERMARK",
        K.kvUsageWatermark,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--kv-usage-penalty <x>",
        "kv-aware: score multiplier added at 100% KV usage",
        "KVSYNC_KV_USAGE_PENALTY",
        K.kvUsagePenalty,
      ).argParser(parseFloatArg),
    )
    .addOption(
      flagOpt(
        "--drain-queue",
        "kv-aware: drain each pod's queued prefill at its prefill rate learned from observed TTFT " +
          "(false: count every queued token until its first byte, the fixed-weight score)",
        "KVSYNC_DRAIN_QUEUE",
        K.drainQueue,
      ),
    )
    .addOption(
      opt(
        "--work-slack <x>",
        "kv-aware: accept up to this share more estimated TTFT for a pod that adds less prefill " +
          "work (0: greedy, the lowest estimate wins)",
        "KVSYNC_WORK_SLACK",
        K.workSlack,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--prefix-ttl-ms <n>",
        "prefix-approx: how long a routed prefix is remembered",
        "KVSYNC_PREFIX_TTL_MS",
        P.ttlMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--prefix-block-size <n>",
        "prefix-approx: tokens per remembered block (default: the engines' block size)",
        "KVSYNC_PREFIX_BLOCK_SIZE",
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--prefix-max-blocks <n>",
        "prefix-approx: remembered blocks (LRU bound)",
        "KVSYNC_PREFIX_MAX_BLOCKS",
        P.maxBlocks,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--prefix-match-threshold <x>",
        "prefix-approx: min matched share to follow the cache",
        "KVSYNC_PREFIX_MATCH_THRESHOLD",
        P.matchThreshold,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--balance-abs-threshold <n>",
        "prefix-approx: in-flight spread that counts as imbalance",
        "KVSYNC_BALANCE_ABS_THRESHOLD",
        P.balanceAbsThreshold,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--balance-rel-threshold <x>",
        "prefix-approx: max/min in-flight ratio that counts as imbalance",
        "KVSYNC_BALANCE_REL_THRESHOLD",
        P.balanceRelThreshold,
      ).argParser(parseFloatArg),
    )
    .addOption(opt("--seed <n>", "seed of the random policy", "KVSYNC_SEED", 1).argParser(parseIntArg));
  addIndexOptions(cmd);
  addFeedbackOptions(cmd);
  addClusterOptions(cmd);
  addMatchWatchOptions(cmd);
  cmd.action(async (o: GatewayCliOptions & Record<string, unknown>) => {
    const log = createLogger("gateway");
    let gw: Awaited<ReturnType<typeof startGateway>>;
    try {
      gw = await startGateway({
        host: o.host,
        port: o.port,
        adminHost: o.adminHost,
        adminPort: o.adminPort,
        discovery: discoveryOptionsFrom(o),
        policy: o.policy,
        tokenizers: o.tokenizer ?? [],
        tokenizerPool: o.tokenizerPool,
        defaultBlockSize: o.blockSize,
        connectTimeoutMs: o.connectTimeoutMs,
        headersTimeoutMs: o.headersTimeoutMs,
        firstByteTimeoutMs: o.firstByteTimeoutMs,
        health: o.healthChecks
          ? {
              probeIntervalMs: o.healthProbeIntervalMs,
              probeTimeoutMs: o.healthProbeTimeoutMs,
              unhealthyAfterProbes: o.healthUnhealthyProbes,
              unhealthyAfterFailures: o.healthUnhealthyFailures,
              slowness: {
                ...H.slowness,
                ratio: o.podSlowRatio as number,
                minExcessMs: o.podSlowMs as number,
              },
            }
          : false,
        bodyTimeoutMs: o.bodyTimeoutMs,
        maxBodyBytes: o.maxBodyBytes,
        connectionsPerPod: o.connectionsPerPod,
        scrapeEngineMetrics: o.scrapeEngineMetrics,
        scrapeIntervalMs: o.scrapeIntervalMs,
        pressure: o.podPressureRatio > 0 ? { ratio: o.podPressureRatio } : false,
        kvAware: {
          gpuWeight: o.gpuWeight,
          cpuWeight: o.cpuWeight,
          storageWeight: o.storageWeight,
          runningRequestCost: o.runningRequestCost,
          waitingRequestTokens: o.waitingRequestTokens,
          kvUsageWatermark: o.kvUsageWatermark,
          kvUsagePenalty: o.kvUsagePenalty,
          drainQueue: o.drainQueue,
          workSlack: o.workSlack,
        },
        prefixApprox: {
          ttlMs: o.prefixTtlMs,
          maxBlocks: o.prefixMaxBlocks,
          ...(o.prefixBlockSize !== undefined ? { blockSize: o.prefixBlockSize } : {}),
          matchThreshold: o.prefixMatchThreshold,
          balanceAbsThreshold: o.balanceAbsThreshold,
          balanceRelThreshold: o.balanceRelThreshold,
        },
        seed: o.seed,
        indexOptions: indexOptionsFrom(o),
        topic: o.topic,
        ...clusterOptionsFrom(o),
        ...feedbackOptionsFrom(o),
        ...matchWatchFrom(o),
        subscriber: { replayTimeoutMs: o.replayTimeoutMs, ...streamHealthFrom(o) },
        ...signalOptionsFrom(o),
        log,
      });
    } catch (err) {
      log.error({ event: "gateway.start_failed", err: String(err) }, "gateway failed to start");
      process.stderr.write(`kvsync gateway: ${(err as Error)?.message ?? String(err)}\n`);
      process.exitCode = 1;
      return;
    }
    process.stdout.write(`${JSON.stringify({ url: gw.url, adminUrl: gw.adminUrl, policy: o.policy })}\n`);
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ event: "gateway.stopping", signal }, "shutting down");
      gw.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
  });
}
