/**
 * Loads the SGLang, TensorRT-LLM and vLLM hybrid-attention conformance frames
 * (test/fixtures/engine-kv-events, written by scripts/fixtures/engine-kv-events.py with msgspec,
 * the engines' own encoder).
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { blockRemoved, blockStored } from "../../../src/protocol/build.ts";
import type { WireEra } from "../../../src/protocol/encode.ts";
import { hashFromText } from "../../../src/protocol/hash.ts";
import type { BlockStored, EventBatch, KvEvent } from "../../../src/protocol/types.ts";
import { asDecoded } from "./reference-decoder.ts";

export const ENGINE_FIXTURE_DIR = join(
  dirname(fileURLToPath(import.meta.url)),
  "../../fixtures/engine-kv-events",
);

interface RawEvent {
  type: string;
  [k: string]: unknown;
}
interface RawFile {
  engine: "sglang" | "trtllm" | "vllm";
  era: WireEra;
  page_size: number;
  topic: string;
  live: string[][];
  replay_request_from_seq: number | null;
  replay_response: string[][] | null;
  expected: Array<{ seq: number; ts: number; dp_rank: number | null; events: RawEvent[] }>;
}

export interface EngineConformance {
  file: string;
  engine: "sglang" | "trtllm" | "vllm";
  era: WireEra;
  pageSize: number;
  topic: string;
  live: Buffer[][];
  replayFromSeq: number | null;
  replayResponse: Buffer[][] | null;
  expected: Array<{ seq: number; batch: EventBatch }>;
}

const hex = (s: string) => Buffer.from(s, "hex");
const opt = <T>(v: unknown): T | null => (v === undefined ? null : (v as T));

/** An expected event (snake_case, hashes as decimal text) in decoded form. */
function expectedEvent(e: RawEvent): KvEvent {
  if (e.type === "BlockStored") {
    const over: Partial<BlockStored> = {
      loraId: opt(e.lora_id),
      medium: opt(e.medium),
      loraName: opt(e.lora_name),
      extraKeys: opt(e.extra_keys),
      groupIdx: opt(e.group_idx),
      kvCacheSpecKind: opt(e.kv_cache_spec_kind),
      kvCacheSpecSlidingWindow: opt(e.kv_cache_spec_sliding_window),
      locality: opt(e.locality),
    };
    if (e.cache_salt !== undefined) over.cacheSalt = e.cache_salt as string;
    return blockStored(
      (e.block_hashes as string[]).map(hashFromText),
      e.parent_block_hash === null || e.parent_block_hash === undefined
        ? null
        : hashFromText(e.parent_block_hash as string),
      e.token_ids as number[],
      e.block_size as number,
      over,
    );
  }
  if (e.type === "BlockRemoved") {
    return blockRemoved((e.block_hashes as string[]).map(hashFromText), {
      medium: opt(e.medium),
      groupIdx: opt(e.group_idx),
      locality: opt(e.locality),
    });
  }
  if (e.type === "AllBlocksCleared") return { type: "AllBlocksCleared" };
  throw new Error(`unexpected event type in fixture: ${e.type}`);
}

export function loadEngineConformance(): EngineConformance[] {
  return readdirSync(ENGINE_FIXTURE_DIR)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => {
      const raw = JSON.parse(readFileSync(join(ENGINE_FIXTURE_DIR, file), "utf8")) as RawFile;
      return {
        file,
        engine: raw.engine,
        era: raw.era,
        pageSize: raw.page_size,
        topic: raw.topic,
        live: raw.live.map((m) => m.map(hex)),
        replayFromSeq: raw.replay_request_from_seq,
        replayResponse: raw.replay_response?.map((m) => m.map(hex)) ?? null,
        expected: raw.expected.map((b) => ({
          seq: b.seq,
          batch: asDecoded({ ts: b.ts, events: b.events.map(expectedEvent), dpRank: b.dp_rank }),
        })),
      };
    });
}
