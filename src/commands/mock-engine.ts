import type { Command } from "commander";
import { DEFAULT_ENGINE_OPTIONS as D } from "../engine/options.ts";
import { ENGINE_FLAVORS, type EngineFlavor } from "../engine/publisher.ts";
import { startEngines } from "../engine/start.ts";
import { collect, opt, parseChoice, parseFloatArg, parseIntArg } from "../util/cli-options.ts";
import { createLogger } from "../util/log.ts";

const nullable = (v: string): string | null => (v === "" || v === "none" ? null : v);

export function register(program: Command): void {
  program
    .command("mock-engine")
    .description(
      "A vLLM-compatible engine simulator: OpenAI API, paged KV cache with prefix caching, real KV events",
    )
    .addOption(opt("--host <host>", "HTTP bind host", "KVSYNC_HOST", D.host))
    .addOption(opt("--port <n>", "HTTP port (0 = ephemeral)", "KVSYNC_PORT", D.port).argParser(parseIntArg))
    .addOption(opt("--model <name>", "served model name", "KVSYNC_MODEL", D.model))
    .addOption(
      opt("--tokenizer <dir>", "directory with tokenizer.json (default: bundled Qwen3)", "KVSYNC_TOKENIZER"),
    )
    .addOption(
      opt(
        "--lora-modules <names...>",
        "LoRA adapters to serve: name or name=path (vLLM syntax; the path is ignored), repeatable",
        "KVSYNC_LORA_MODULES",
      ).argParser((v: string, prev: string[] | undefined) =>
        collect(v, prev)
          .flatMap((x) => x.split(","))
          .map((x) => x.split("=")[0].trim())
          .filter(Boolean),
      ),
    )
    .addOption(
      opt("--block-size <n>", "tokens per KV block", "KVSYNC_BLOCK_SIZE", D.blockSize).argParser(parseIntArg),
    )
    .addOption(
      opt("--num-gpu-blocks <n>", "GPU KV blocks", "KVSYNC_NUM_GPU_BLOCKS", D.numGpuBlocks).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt(
        "--num-cpu-blocks <n>",
        "CPU offload tier blocks (0 = off)",
        "KVSYNC_NUM_CPU_BLOCKS",
        D.numCpuBlocks,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-model-len <n>",
        "max prompt + output tokens",
        "KVSYNC_MAX_MODEL_LEN",
        D.maxModelLen,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-num-seqs <n>",
        "max running requests per rank",
        "KVSYNC_MAX_NUM_SEQS",
        D.maxNumSeqs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-num-batched-tokens <n>",
        "token budget per scheduler step",
        "KVSYNC_MAX_NUM_BATCHED_TOKENS",
        D.maxNumBatchedTokens,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-waiting <n>",
        "waiting-queue bound per rank (503 beyond)",
        "KVSYNC_MAX_WAITING",
        D.maxWaiting,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt("--hash-seed <seed>", "block-hash seed (like PYTHONHASHSEED; default random)", "KVSYNC_HASH_SEED"),
    )
    .addOption(
      opt("--hash-format <f>", "int | bytes", "KVSYNC_HASH_FORMAT", D.hashFormat).argParser(
        parseChoice(["int", "bytes"]),
      ),
    )
    .addOption(
      opt("--event-format <f>", "map (newest era) | array", "KVSYNC_EVENT_FORMAT", D.eventFormat).argParser(
        parseChoice(["map", "array"]),
      ),
    )
    .addOption(
      opt(
        "--flavor <engine>",
        "whose KV events to publish: vllm (--event-format era) | sglang | sglang-2025 | trtllm (docs/engines.md)",
        "KVSYNC_FLAVOR",
        D.flavor,
      ).argParser(parseChoice([...ENGINE_FLAVORS])),
    )
    .addOption(
      opt(
        "--events-endpoint <ep>",
        "KV events PUB endpoint ('none' = off)",
        "KVSYNC_EVENTS_ENDPOINT",
        D.eventsEndpoint,
      ),
    )
    .addOption(
      opt(
        "--replay-endpoint <ep>",
        "replay ROUTER endpoint ('none' = off)",
        "KVSYNC_REPLAY_ENDPOINT",
        D.replayEndpoint,
      ),
    )
    .addOption(opt("--topic <topic>", "PUB topic", "KVSYNC_TOPIC", D.topic))
    .addOption(
      opt(
        "--replay-buffer-steps <n>",
        "batches kept for replay",
        "KVSYNC_REPLAY_BUFFER_STEPS",
        D.replayBufferSteps,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--data-parallel-size <n>",
        "data-parallel ranks (rank r on events/replay port + start rank + r: keep the two port ranges apart)",
        "KVSYNC_DATA_PARALLEL_SIZE",
        D.dataParallelSize,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--data-parallel-start-rank <n>",
        "global rank of the first rank (vLLM's; offsets the ports and the batches' rank)",
        "KVSYNC_DATA_PARALLEL_START_RANK",
        D.dataParallelStartRank,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--dp-routing <mode>",
        "rank for requests without X-data-parallel-rank: least-loaded | round-robin",
        "KVSYNC_DP_ROUTING",
        D.dpRouting,
      ).argParser(parseChoice(["least-loaded", "round-robin"])),
    )
    .addOption(
      opt("--speed <x>", "timing-model speed-up factor", "KVSYNC_SPEED", D.speed).argParser(parseFloatArg),
    )
    .addOption(
      opt("--step-ms <ms>", "cost per scheduler step", "KVSYNC_STEP_MS", D.stepMs).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--prefill-ms-per-token <ms>",
        "cost per uncached prompt token",
        "KVSYNC_PREFILL_MS_PER_TOKEN",
        D.prefillMsPerToken,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--decode-ms-per-seq <ms>",
        "cost per decoding sequence per step",
        "KVSYNC_DECODE_MS_PER_SEQ",
        D.decodeMsPerSeq,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--load-ms-per-token <ms>",
        "cost per token loaded from the CPU tier",
        "KVSYNC_LOAD_MS_PER_TOKEN",
        D.loadMsPerToken,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--min-output-tokens <n>",
        "synthetic output length without max_tokens: min",
        "KVSYNC_MIN_OUTPUT_TOKENS",
        D.minOutputTokens,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--max-output-tokens <n>",
        "synthetic output length without max_tokens: max",
        "KVSYNC_MAX_OUTPUT_TOKENS",
        D.maxOutputTokens,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--drop-event-rate <p>",
        "fraction of batches not sent (seq gap, still replayable: like a PUB HWM drop)",
        "KVSYNC_DROP_EVENT_RATE",
        D.dropEventRate,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--fail-event-rate <p>",
        "fraction of batches lost for good (seq gap, not in the replay buffer: like a failed encode)",
        "KVSYNC_FAIL_EVENT_RATE",
        D.failEventRate,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--lose-event-rate <p>",
        "fraction of batches lost silently before they get a seq (not sent, not in the replay buffer, no gap: an engine that loses events)",
        "KVSYNC_LOSE_EVENT_RATE",
        D.loseEventRate,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--removed-events <mode>",
        "BlockRemoved for duplicate copies of a hash: per-copy (as vLLM) | last-copy (one per hash)",
        "KVSYNC_REMOVED_EVENTS",
        D.removedEvents,
      ).argParser(parseChoice(["last-copy", "per-copy"])),
    )
    .addOption(
      opt(
        "--hybrid <window>",
        "hybrid attention: a sliding-window KV-cache group of <window> tokens beside full attention (0 = off; docs/engines.md)",
        "KVSYNC_HYBRID",
        D.hybridWindow,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt("--seed <n>", "seed of fault injection and synthetic output", "KVSYNC_SEED", D.seed).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt("--max-body-bytes <n>", "max HTTP request body", "KVSYNC_MAX_BODY_BYTES", D.maxBodyBytes).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt("--replicas <n>", "independent engines in this process", "KVSYNC_REPLICAS", 1).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt("--port-stride <k>", "replica i uses every port + i*k", "KVSYNC_PORT_STRIDE", 0).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt(
        "--hosts <list>",
        "comma-separated: replica i binds HTTP and ZMQ on host i",
        "KVSYNC_HOSTS",
      ).argParser((v) => v.split(",").filter(Boolean)),
    )
    .action(async (a: Record<string, unknown>) => {
      const log = createLogger("mock-engine");
      let engines: Awaited<ReturnType<typeof startEngines>>;
      try {
        engines = await startEngines({
          log,
          host: a.host as string,
          port: a.port as number,
          model: a.model as string,
          tokenizer: (a.tokenizer as string | undefined) ?? null,
          loraModules: (a.loraModules as string[] | undefined) ?? [],
          blockSize: a.blockSize as number,
          numGpuBlocks: a.numGpuBlocks as number,
          numCpuBlocks: a.numCpuBlocks as number,
          maxModelLen: a.maxModelLen as number,
          maxNumSeqs: a.maxNumSeqs as number,
          maxNumBatchedTokens: a.maxNumBatchedTokens as number,
          maxWaiting: a.maxWaiting as number,
          hashSeed: (a.hashSeed as string | undefined) ?? null,
          hashFormat: a.hashFormat as "int" | "bytes",
          eventFormat: a.eventFormat as "map" | "array",
          flavor: a.flavor as EngineFlavor,
          eventsEndpoint: nullable(a.eventsEndpoint as string),
          replayEndpoint: nullable(a.replayEndpoint as string),
          topic: a.topic as string,
          replayBufferSteps: a.replayBufferSteps as number,
          dataParallelSize: a.dataParallelSize as number,
          dataParallelStartRank: a.dataParallelStartRank as number,
          dpRouting: a.dpRouting as "least-loaded" | "round-robin",
          speed: a.speed as number,
          stepMs: a.stepMs as number,
          prefillMsPerToken: a.prefillMsPerToken as number,
          decodeMsPerSeq: a.decodeMsPerSeq as number,
          loadMsPerToken: a.loadMsPerToken as number,
          minOutputTokens: a.minOutputTokens as number,
          maxOutputTokens: a.maxOutputTokens as number,
          dropEventRate: a.dropEventRate as number,
          failEventRate: a.failEventRate as number,
          loseEventRate: a.loseEventRate as number,
          seed: a.seed as number,
          removedEvents: a.removedEvents as "last-copy" | "per-copy",
          hybridWindow: a.hybrid as number,
          maxBodyBytes: a.maxBodyBytes as number,
          replicas: a.replicas as number,
          portStride: a.portStride as number,
          hosts: a.hosts as string[] | undefined,
        });
      } catch (err) {
        log.error({ event: "engine.start_failed", err: String(err) }, `mock engine failed to start: ${err}`);
        process.exitCode = 1;
        return;
      }
      log.info(
        {
          event: "engines.ready",
          engines: engines.map((e) => ({
            http: e.httpUrl,
            events: e.eventsEndpoints,
            replay: e.replayEndpoints,
          })),
        },
        `${engines.length} mock engine(s) ready`,
      );
      let stopping = false;
      const stop = async (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info({ event: "engine.shutdown", signal }, "shutting down");
        await Promise.allSettled(engines.map((e) => e.close()));
        process.exit(0);
      };
      process.once("SIGTERM", () => void stop("SIGTERM"));
      process.once("SIGINT", () => void stop("SIGINT"));
    });
}
