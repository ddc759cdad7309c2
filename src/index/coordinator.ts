/**
 * vLLM's hybrid prefix-hit rule (`HybridKVCacheCoordinator.find_longest_cache_hit` in
 * vllm/v1/core/kv_cache_coordinator.py and `SlidingWindowManager.find_longest_cache_hit` in
 * single_type_kv_cache_manager.py), on the index's chain keys: see groups.ts.
 */
import { chainHash, namespaceSeed, stringHash64 } from "./chain-hash.ts";
import type { NamespaceRef } from "./types.ts";

export type GroupKind = "full" | "sliding" | "other";

/** What the rule reads of a KV-cache group: its kind, window, and the chain keys it holds. */
export interface GroupHolding {
  kind: GroupKind;
  /** tokens; 0 for full attention */
  window: number;
  /** chain key "hi:lo" -> claims naming it */
  held: Map<string, number>;
}

/** Blocks a sliding window of `window` tokens needs before the hit point (vLLM's rule). */
export function windowBlocks(window: number, blockSize: number): number {
  return Math.ceil((window - 1) / blockSize);
}

/** The request's chain keys "hi:lo" of its first `n` blocks (as the index keys them). */
export function requestKeys(
  ns: NamespaceRef,
  tokenIds: ArrayLike<number>,
  n: number,
  seed: Int32Array,
  k2: Int32Array,
): string[] {
  namespaceSeed(ns, seed);
  if (typeof ns.salt === "string") stringHash64(ns.salt, k2, 0);
  else k2.fill(0);
  const out: string[] = new Array(n);
  for (let b = 0; b < n; b++) {
    chainHash(seed[0], seed[1], k2[0], k2[1], tokenIds, b * ns.blockSize, ns.blockSize, k2, 0);
    out[b] = `${k2[0]}:${k2[1]}`;
  }
  return out;
}

/**
 * vLLM's fixed point over the non-primary groups: each group lowers the bound `e` (blocks)
 * to what it accepts, until none lowers it.
 */
export function hitLength(groups: Map<number, GroupHolding>, keys: string[], e: number, bs: number): number {
  for (;;) {
    const start = e;
    for (const g of groups.values()) {
      if (e === 0) return 0;
      if (g.kind === "full") {
        let r = 0;
        while (r < e && g.held.has(keys[r])) r++;
        e = r;
      } else e = slidingHit(g, keys, e, windowBlocks(g.window, bs));
    }
    if (e >= start) return e;
  }
}

/** SlidingWindowManager.find_longest_cache_hit on blocks [0, e) with n contiguous blocks. */
function slidingHit(g: GroupHolding, keys: string[], e: number, n: number): number {
  let run = 0;
  for (let i = e - 1; i >= 0; i--) {
    if (g.held.has(keys[i])) {
      run++;
      if (run >= n) return i + run;
    } else run = 0;
  }
  return run;
}
