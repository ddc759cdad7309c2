import type { StreamRef } from "../../../src/index/types.ts";
import { blockRemoved, blockStored } from "../../../src/protocol/build.ts";
import { hashFromInt } from "../../../src/protocol/hash.ts";
import type {
  AllBlocksCleared,
  BlockRemoved,
  BlockStored,
  EventBatch,
  HashKey,
} from "../../../src/protocol/types.ts";

/** HashKey of a non-negative integer (< 2^53): "u" + 8 big-endian bytes. */
export function hk(n: number): HashKey {
  return hashFromInt(n);
}

export function stream(streamId: string, model = "m", pod?: string, rank: number | null = null): StreamRef {
  return { streamId, pod: pod ?? streamId.split("#")[0], rank, model };
}

export function stored(
  hashes: HashKey[],
  parent: HashKey | null,
  tokenIds: number[],
  o: Partial<BlockStored> = {},
): BlockStored {
  return blockStored(hashes, parent, tokenIds, 4, { medium: "GPU", ...o });
}

export function removed(
  hashes: HashKey[],
  medium: string | null = "GPU",
  o: Partial<BlockRemoved> = {},
): BlockRemoved {
  return blockRemoved(hashes, { medium, ...o });
}

export function cleared(): AllBlocksCleared {
  return { type: "AllBlocksCleared" };
}

export function batch(...events: EventBatch["events"]): EventBatch {
  return { ts: 0, events, dpRank: null };
}

/** tokens of `n` blocks of size bs: block i has content derived from ids[i] */
export function toks(ids: number[], bs = 4): number[] {
  const out: number[] = [];
  for (const id of ids) for (let j = 0; j < bs; j++) out.push(id * 100 + j);
  return out;
}
