/** Public API of the protocol layer (vLLM KV events: framing, decode, encode, replay, hashes). */
import { hashToText } from "./hash.ts";
import type { EventBatch, KvEvent } from "./types.ts";

export { blockRemoved, blockStored } from "./build.ts";
export { DEFAULT_DECODE_LIMITS, type DecodeLimits, type DecodeResult, decodeBatch } from "./decode.ts";
export {
  ENGINE_ERAS,
  type EngineEra,
  encodeBatch,
  eraFields,
  type VllmEra,
  WIRE_ERAS,
  type WireEra,
} from "./encode.ts";
export { dataParallelEndpoint } from "./endpoints.ts";
export { isProtocolError, ProtocolError, type ProtocolErrorCode } from "./errors.ts";
export { decodePubMessage, decodeSeq, encodePubMessage, encodeSeq } from "./frames.ts";
export {
  type HashKind,
  hashFromBigInt,
  hashFromBytes,
  hashFromInt,
  hashFromText,
  hashFromUint64Parts,
  hashKind,
  hashToBigInt,
  hashToBytes,
  hashToText,
  isHashKey,
} from "./hash.ts";
export {
  decodeReplayRequest,
  decodeReplayResponse,
  encodeReplayEnd,
  encodeReplayRequest,
  encodeReplayResponse,
  isReplayEndSeq,
  REPLAY_END_SEQ,
  type ReplayResponse,
  replayEndSeqBytes,
} from "./replay.ts";
export * from "./types.ts";

/** JSON-safe value: bigints become decimal strings, byte strings "0x" + hex. */
function jsonSafe(v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Uint8Array)
    return `0x${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex")}`;
  if (Array.isArray(v)) return v.map(jsonSafe);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = jsonSafe(x);
    return out;
  }
  return v;
}

export type EventJson =
  | {
      type: "BlockStored";
      blockHashes: string[];
      parentBlockHash: string | null;
      tokenIds: number[];
      blockSize: number;
      loraId: number | null;
      loraName: string | null;
      medium: string | null;
      extraKeys: unknown[] | null;
      groupIdx: number | null;
      kvCacheSpecKind: string | null;
      kvCacheSpecSlidingWindow: number | null;
      locality: string | null;
    }
  | {
      type: "BlockRemoved";
      blockHashes: string[];
      medium: string | null;
      groupIdx: number | null;
      locality: string | null;
    }
  | { type: "AllBlocksCleared" };

export interface BatchJson {
  seq: number;
  ts: number;
  dpRank: number | null;
  events: EventJson[];
}

/** One event as camelCase JSON, hashes in canonical text form (decimal / "0x" + hex). */
export function eventToJson(ev: KvEvent): EventJson {
  switch (ev.type) {
    case "BlockStored":
      return {
        type: "BlockStored",
        blockHashes: ev.blockHashes.map(hashToText),
        parentBlockHash: ev.parentBlockHash === null ? null : hashToText(ev.parentBlockHash),
        tokenIds: ev.tokenIds,
        blockSize: ev.blockSize,
        loraId: ev.loraId,
        loraName: ev.loraName,
        medium: ev.medium,
        extraKeys: ev.extraKeys === null ? null : (jsonSafe(ev.extraKeys) as unknown[]),
        groupIdx: ev.groupIdx,
        kvCacheSpecKind: ev.kvCacheSpecKind,
        kvCacheSpecSlidingWindow: ev.kvCacheSpecSlidingWindow,
        locality: ev.locality,
      };
    case "BlockRemoved":
      return {
        type: "BlockRemoved",
        blockHashes: ev.blockHashes.map(hashToText),
        medium: ev.medium,
        groupIdx: ev.groupIdx,
        locality: ev.locality,
      };
    default:
      return { type: "AllBlocksCleared" };
  }
}

/** A batch as `{"seq","ts","dpRank","events":[...]}` (what `kvsync events tail` prints). */
export function batchToJson(seq: number, batch: EventBatch): BatchJson {
  return { seq, ts: batch.ts, dpRank: batch.dpRank, events: batch.events.map(eventToJson) };
}
