/**
 * The sync prefix index: which stream (pod / data-parallel rank) holds which prefix block, per
 * namespace (model, LoRA adapter, block size), kept in step with engine KV events.
 *
 * Rules (both backends; see rules.ts for event interpretation):
 * - Blocks are keyed by the index's own chained hash of token ids (chain-hash.ts); each stream
 *   keeps engine hash -> entry so BlockRemoved works. A BlockStored whose non-null parent the
 *   stream does not hold is kept for removal but never matched, nor are its descendants.
 * - Tokenless BlockStored (offload tiers) adds its tier to the entry of the same engine hash;
 *   unknown hashes are kept for removal only. Partial token lists key only their leading full
 *   blocks; the rest are kept for removal only.
 * - Per entry, a set of tiers; BlockRemoved removes its medium's tier (null = GPU) and the entry
 *   when no tier is left. AllBlocksCleared / dropStream walk only that stream's entries.
 * - Caps: global and per stream, evicting least-recently-touched entries (touch = store or
 *   re-store of the engine hash; matches do not touch). Counted in stats() and onEvict.
 * - match(): per stream, leading full blocks held on any tier and per tier (leading run).
 */
import { GroupedIndex } from "./groups.ts";
import { ReferenceIndex } from "./reference.ts";
import { type SyncIndexOptions, SyncPrefixIndex } from "./sync-index.ts";
import type { PrefixIndex } from "./types.ts";

export { blockKeys, chainHash, namespaceKey, namespaceSeed, stringHash64 } from "./chain-hash.ts";
export { windowBlocks } from "./coordinator.ts";
export {
  GroupedIndex,
  type GroupedIndexOptions,
  type GroupKind,
  groupKindOf,
} from "./groups.ts";
export { ReferenceIndex, sortMatches } from "./reference.ts";
export {
  DEFAULT_MAX_ENTRIES,
  DEFAULT_MAX_ENTRIES_PER_STREAM,
  type IndexCounters,
  type IndexOptions,
  MAX_EXTRA_COPIES,
} from "./rules.ts";
export { type SyncIndexOptions, SyncPrefixIndex } from "./sync-index.ts";
export type * from "./types.ts";

export type IndexBackend = "sync" | "reference";

/**
 * The production index (typed arrays); `backend: "reference"` gives the Map-based oracle. Either
 * sits behind the KV-cache group layer (groups.ts), which passes non-hybrid streams straight
 * through.
 */
export function createIndex(opts: SyncIndexOptions & { backend?: IndexBackend } = {}): PrefixIndex {
  const inner = opts.backend === "reference" ? new ReferenceIndex(opts) : new SyncPrefixIndex(opts);
  return new GroupedIndex(inner);
}
