import type { BlockRemoved, BlockStored, HashKey } from "./types.ts";

/**
 * Builders of the block events, so the full field list is written once: what an engine (the
 * mock engine) publishes and what tests and benches feed the index. Every optional field is
 * null unless given, as the decoder reports a field an older engine does not send.
 */

export function blockStored(
  blockHashes: HashKey[],
  parentBlockHash: HashKey | null,
  tokenIds: number[],
  blockSize: number,
  over: Partial<Omit<BlockStored, "type">> = {},
): BlockStored {
  return {
    type: "BlockStored",
    blockHashes,
    parentBlockHash,
    tokenIds,
    blockSize,
    loraId: null,
    medium: null,
    loraName: null,
    extraKeys: null,
    groupIdx: null,
    kvCacheSpecKind: null,
    kvCacheSpecSlidingWindow: null,
    locality: null,
    ...over,
  };
}

export function blockRemoved(
  blockHashes: HashKey[],
  over: Partial<Omit<BlockRemoved, "type">> = {},
): BlockRemoved {
  return { type: "BlockRemoved", blockHashes, medium: null, groupIdx: null, locality: null, ...over };
}
