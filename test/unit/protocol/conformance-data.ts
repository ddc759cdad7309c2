/** Loads the vLLM conformance captures (test/fixtures/vllm-kv-events) for the protocol tests. */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { WireEra } from "../../../src/protocol/encode.ts";
import { hashFromText } from "../../../src/protocol/hash.ts";
import type { EventBatch, KvEvent } from "../../../src/protocol/types.ts";
import { asDecoded } from "./reference-decoder.ts";

export const FIXTURE_DIR = join(dirname(fileURLToPath(import.meta.url)), "../../fixtures/vllm-kv-events");

/** The era each captured vLLM commit writes. */
export const ERA_OF_COMMIT: Record<string, WireEra> = {
  "0be6d05b5": "2025-04",
  "82dfb12e5": "2025-09",
  bcb9c133b: "2026-05",
  "48fc2e279": "2026-07",
};

interface RawExpectedEvent {
  type: string;
  [k: string]: unknown;
}
interface RawFile {
  vllm_commit: string;
  topic: string;
  live: string[][];
  replay_request_from_seq: number;
  replay_response: string[][];
  expected: Array<{ seq: number; ts: number; events: RawExpectedEvent[] }>;
}

export interface Conformance {
  file: string;
  commit: string;
  era: WireEra;
  topic: string;
  live: Buffer[][];
  replayFromSeq: number;
  replayResponse: Buffer[][];
  /** seq → batch as the `expected` section describes it (dpRank from the era: 0 when present). */
  expected: Array<{ seq: number; batch: EventBatch }>;
}

const hex = (s: string) => Buffer.from(s, "hex");
const opt = <T>(v: unknown): T | null => (v === undefined ? null : (v as T));
const hashOrNull = (v: unknown) => (v === null || v === undefined ? null : hashFromText(v as string));

/** Expected event (snake_case, hash strings) → decoded form; fields absent in old eras → null. */
export function expectedEvent(e: RawExpectedEvent): KvEvent {
  if (e.type === "BlockStored") {
    return {
      type: "BlockStored",
      blockHashes: (e.block_hashes as string[]).map(hashFromText),
      parentBlockHash: hashOrNull(e.parent_block_hash),
      tokenIds: e.token_ids as number[],
      blockSize: e.block_size as number,
      loraId: opt(e.lora_id),
      medium: opt(e.medium),
      loraName: opt(e.lora_name),
      extraKeys: opt(e.extra_keys),
      groupIdx: opt(e.group_idx),
      kvCacheSpecKind: opt(e.kv_cache_spec_kind),
      kvCacheSpecSlidingWindow: opt(e.kv_cache_spec_sliding_window),
      locality: opt(e.locality),
    };
  }
  if (e.type === "BlockRemoved") {
    return {
      type: "BlockRemoved",
      blockHashes: (e.block_hashes as string[]).map(hashFromText),
      medium: opt(e.medium),
      groupIdx: opt(e.group_idx),
      locality: opt(e.locality),
    };
  }
  if (e.type === "AllBlocksCleared") return { type: "AllBlocksCleared" };
  throw new Error(`unexpected event type in fixture: ${e.type}`);
}

export function loadConformance(): Conformance[] {
  const files = readdirSync(FIXTURE_DIR)
    .filter((f) => f.endsWith(".json"))
    .sort();
  return files.map((file) => {
    const raw = JSON.parse(readFileSync(join(FIXTURE_DIR, file), "utf8")) as RawFile;
    const era = ERA_OF_COMMIT[raw.vllm_commit];
    if (era === undefined) throw new Error(`no era known for vLLM commit ${raw.vllm_commit}`);
    return {
      file,
      commit: raw.vllm_commit,
      era,
      topic: raw.topic,
      live: raw.live.map((m) => m.map(hex)),
      replayFromSeq: raw.replay_request_from_seq,
      replayResponse: raw.replay_response.map((m) => m.map(hex)),
      expected: raw.expected.map((b) => ({
        seq: b.seq,
        batch: asDecoded({
          ts: b.ts,
          events: b.events.map(expectedEvent),
          dpRank: era === "2025-04" ? null : 0,
        }),
      })),
    };
  });
}
