import { dataParallelLayout } from "../protocol/endpoints.ts";
import { ENGINE_FLAVORS, type EngineFlavor, type EventFormat, pubShouldBind } from "./publisher.ts";

export type HashFormat = "int" | "bytes";

/** Everything a mock engine (or a set of replicas) is configured with. */
export interface EngineOptions {
  host: string;
  /** HTTP port (0 = ephemeral) */
  port: number;
  model: string;
  /** directory with tokenizer.json (default: the bundled Qwen3 tokenizer) */
  tokenizer: string | null;
  loraModules: string[];
  blockSize: number;
  numGpuBlocks: number;
  numCpuBlocks: number;
  maxModelLen: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** bound of the waiting queue per rank (503 beyond) */
  maxWaiting: number;
  /** PYTHONHASHSEED-like: null = random per process */
  hashSeed: string | null;
  hashFormat: HashFormat;
  eventFormat: EventFormat;
  /** whose KV-event publisher to reproduce (wire format, hash sign, cache salts) */
  flavor: EngineFlavor;
  /** null disables KV events */
  eventsEndpoint: string | null;
  /** null disables replay */
  replayEndpoint: string | null;
  /** force PUB bind (true) / connect (false); null = vLLM's rule on the endpoint text */
  eventsBind: boolean | null;
  /** BlockRemoved for duplicate copies of a hash: when the last goes (exact), or per copy (vLLM) */
  removedEvents: "last-copy" | "per-copy";
  topic: string;
  replayBufferSteps: number;
  dataParallelSize: number;
  /**
   * global rank of the first rank (vLLM --data-parallel-start-rank): rank i publishes on the
   * events/replay port + start + i and stamps its batches with start + i
   */
  dataParallelStartRank: number;
  /** timing model (ms), divided by `speed` */
  stepMs: number;
  prefillMsPerToken: number;
  decodeMsPerSeq: number;
  loadMsPerToken: number;
  speed: number;
  /** synthetic output length when a request gives no max_tokens: uniform in [min, max] */
  minOutputTokens: number;
  maxOutputTokens: number;
  dropEventRate: number;
  /** batches whose seq is consumed but that are neither sent nor buffered (a failed encode) */
  failEventRate: number;
  /** batches lost before they get a seq: nothing on the wire shows the loss */
  loseEventRate: number;
  /** seeds the fault-injection RNG and synthetic outputs */
  seed: number;
  maxBodyBytes: number;
  /** DP request routing when no X-data-parallel-rank header: least-loaded (ties round-robin) */
  dpRouting: "least-loaded" | "round-robin";
  /**
   * Hybrid attention (hybrid-cache.ts): a sliding-window group of this many tokens beside the
   * full-attention group, both published with vLLM's group fields; 0 = one full-attention group.
   */
  hybridWindow: number;
}

export const DEFAULT_ENGINE_OPTIONS: EngineOptions = {
  host: "0.0.0.0",
  port: 8000,
  model: "Qwen/Qwen3-0.6B",
  tokenizer: null,
  loraModules: [],
  blockSize: 16,
  numGpuBlocks: 2048,
  numCpuBlocks: 0,
  maxModelLen: 8192,
  maxNumSeqs: 256,
  maxNumBatchedTokens: 2048,
  maxWaiting: 4096,
  hashSeed: null,
  hashFormat: "int",
  eventFormat: "map",
  flavor: "vllm",
  eventsEndpoint: "tcp://*:5557",
  replayEndpoint: "tcp://*:5558",
  eventsBind: null,
  removedEvents: "per-copy",
  topic: "",
  replayBufferSteps: 10_000,
  dataParallelSize: 1,
  dataParallelStartRank: 0,
  stepMs: 4,
  prefillMsPerToken: 0.1,
  decodeMsPerSeq: 0.2,
  loadMsPerToken: 0.01,
  speed: 1,
  minOutputTokens: 16,
  maxOutputTokens: 64,
  dropEventRate: 0,
  failEventRate: 0,
  loseEventRate: 0,
  seed: 0,
  maxBodyBytes: 4 * 1024 * 1024,
  dpRouting: "least-loaded",
  hybridWindow: 0,
};

export function validateOptions(o: EngineOptions): void {
  const intAtLeast = (name: keyof EngineOptions, min: number) => {
    const v = o[name];
    if (typeof v !== "number" || !Number.isInteger(v) || v < min)
      throw new Error(`${name} must be an integer >= ${min}`);
  };
  intAtLeast("port", 0);
  intAtLeast("blockSize", 1);
  intAtLeast("numGpuBlocks", 1);
  intAtLeast("numCpuBlocks", 0);
  intAtLeast("maxModelLen", 1);
  intAtLeast("maxNumSeqs", 1);
  intAtLeast("maxNumBatchedTokens", 1);
  intAtLeast("maxWaiting", 1);
  intAtLeast("replayBufferSteps", 1);
  intAtLeast("dataParallelSize", 1);
  intAtLeast("dataParallelStartRank", 0);
  intAtLeast("minOutputTokens", 1);
  intAtLeast("maxOutputTokens", 1);
  intAtLeast("maxBodyBytes", 1024);
  intAtLeast("hybridWindow", 0);
  if (o.hybridWindow > 0 && (o.numCpuBlocks !== 0 || o.flavor !== "vllm"))
    throw new Error("the hybrid mode is vLLM's (--flavor vllm) and has no CPU tier (--num-cpu-blocks 0)");
  if (o.maxOutputTokens < o.minOutputTokens) throw new Error("maxOutputTokens must be >= minOutputTokens");
  if (!(o.speed > 0)) throw new Error("speed must be > 0");
  for (const k of ["stepMs", "prefillMsPerToken", "decodeMsPerSeq", "loadMsPerToken"] as const) {
    if (!(o[k] >= 0)) throw new Error(`${k} must be >= 0`);
  }
  for (const k of ["dropEventRate", "failEventRate", "loseEventRate"] as const) {
    if (!(o[k] >= 0 && o[k] <= 1)) throw new Error(`${k} must be in [0, 1]`);
  }
  if (o.hashFormat !== "int" && o.hashFormat !== "bytes") throw new Error("hashFormat must be int or bytes");
  if (o.eventFormat !== "map" && o.eventFormat !== "array")
    throw new Error("eventFormat must be map or array");
  if (!ENGINE_FLAVORS.includes(o.flavor))
    throw new Error(`flavor must be one of ${ENGINE_FLAVORS.join(", ")}`);
  if (o.flavor !== "vllm" && o.hashFormat !== "int")
    throw new Error(`the ${o.flavor} flavor publishes int hashes`);
  if (o.eventsEndpoint !== null) {
    // vLLM offsets both ports by the rank: refuse a layout where two sockets meet (vLLM fails
    // to bind there, or a subscriber reads the wrong socket)
    dataParallelLayout({
      events: o.eventsEndpoint,
      replay: o.replayEndpoint,
      size: o.dataParallelSize,
      startRank: o.dataParallelStartRank,
      http: o.port === 0 ? null : `tcp://*:${o.port}`,
      eventsConnect: !(o.eventsBind ?? pubShouldBind(o.eventsEndpoint)),
    });
  }
  if (new Set(o.loraModules).size !== o.loraModules.length || o.loraModules.includes(o.model)) {
    throw new Error("LoRA module names must be unique and differ from the model name");
  }
}
