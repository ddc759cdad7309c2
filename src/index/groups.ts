/**
 * KV-cache groups of hybrid models (vLLM's `group_idx`, `kv_cache_spec_kind`,
 * `kv_cache_spec_sliding_window`) as a decorator over any `PrefixIndex`.
 *
 * A hybrid model (e.g. sliding-window and full-attention layers) keeps one block table per
 * KV-cache group; every group caches the same chained block hashes, but each group evicts on its
 * own, and a sliding-window group frees the blocks that fall out of its window. vLLM's
 * `HybridKVCacheCoordinator.find_longest_cache_hit` (vllm/v1/core/kv_cache_coordinator.py) counts
 * a prefix as cached only where every group accepts it:
 * - full attention needs all blocks [0, e);
 * - a sliding window of w tokens needs the n = ceil((w - 1) / block size) blocks before e
 *   (`SlidingWindowManager.find_longest_cache_hit`: scanning right to left from the current
 *   bound, the first run of n held blocks ends the hit; with no such run, the run from block 0);
 * - the bound starts at the full-attention hit (and at most (prompt tokens - 1) / block size:
 *   vLLM always recomputes the last token), and each group lowers it until all accept.
 *
 * Layout here: a stream is *grouped* once it sends an event of a group other than 0 or of a
 * non-full-attention kind. Its first full-attention group (or group 0 while no kind is sent) is
 * the *primary* group: its events go to the inner index unchanged (so a non-hybrid stream costs
 * nothing, and `match` on a fleet with no grouped stream is the inner index's own). Every other
 * group keeps its claims here, per group, keyed by the inner index's chain keys (chain-hash.ts):
 * a removal in one group never touches another group's claim. A sliding-window group's
 * BlockStored names only the blocks still in its window (vLLM skips the null blocks that
 * `remove_skipped_blocks` left) while its token ids span the whole range: its hashes are the
 * trailing blocks of the range. Kinds other than full attention and sliding window (Mamba,
 * chunked local attention, ...) are not modelled: such a stream matches nothing (routing falls
 * back to load for it) rather than over-predicting.
 */
import { FULL_ATTENTION_KINDS, needsGroupLayer } from "../protocol/schema.ts";
import type { BlockRemoved, BlockStored, EventBatch, HashKey, KvEvent } from "../protocol/types.ts";
import { chainHash, namespaceSeed, stringHash64 } from "./chain-hash.ts";
import { type GroupHolding, type GroupKind, hitLength, requestKeys } from "./coordinator.ts";
import { sortMatches } from "./reference.ts";
import { keyableBlocks, loraOf, MAX_EXTRA_COPIES, saltOf, tierBit } from "./rules.ts";
import type {
  BlockClaim,
  GroupClaims,
  IndexStats,
  NamespaceRef,
  PrefixIndex,
  StreamExport,
  StreamMatch,
  StreamRef,
  TierCounts,
} from "./types.ts";

/** SlidingWindowSpec and its MLA subclass. */
const SLIDING_KINDS: ReadonlySet<string> = new Set(["sliding_window", "sliding_window_mla"]);

export type { GroupKind };

export function groupKindOf(kind: string | null | undefined): GroupKind | null {
  if (typeof kind !== "string") return null;
  if (FULL_ATTENTION_KINDS.has(kind)) return "full";
  if (SLIDING_KINDS.has(kind)) return "sliding";
  return "other";
}

interface Claim {
  /** chain key "hi:lo", null when the block cannot be matched (unknown parent, multimodal) */
  key: string | null;
  tiers: number;
  /** further physical copies on GPU (vLLM emits a BlockStored / BlockRemoved per copy) */
  copies: number;
}

interface GroupState extends GroupHolding {
  claims: Map<HashKey, Claim>;
}

interface GroupedStream {
  ref: StreamRef;
  /** the group whose events go to the inner index; null until one is seen */
  primary: number | null;
  groups: Map<number, GroupState>;
  /** engine hash -> chain key, over every group (a hash names one prefix in all groups) */
  keys: Map<HashKey, string>;
  /** a group kind this layer does not model */
  unsupported: string | null;
}

export interface GroupCounters {
  /** events of a group whose kind is unknown (no kind sent yet): ignored as before */
  ignoredGroupEvents: number;
  /** group claims dropped to stay under the cap */
  groupEvictions: number;
  /** group BlockStored whose parent this layer could not key (stored unmatched) */
  groupOrphans: number;
}

export interface GroupedIndexOptions {
  /** cap per grouped stream on remembered hashes, and per group on claims (default 1M) */
  maxGroupEntries?: number;
}

const EMPTY: StreamMatch[] = [];

export class GroupedIndex implements PrefixIndex {
  private readonly grouped = new Map<string, GroupedStream>();
  private readonly cap: number;
  private readonly c: GroupCounters = { ignoredGroupEvents: 0, groupEvictions: 0, groupOrphans: 0 };
  private readonly k2 = new Int32Array(2);
  private readonly seed = new Int32Array(2);

  constructor(
    readonly inner: PrefixIndex,
    opts: GroupedIndexOptions = {},
  ) {
    this.cap = Math.max(1, Math.floor(opts.maxGroupEntries ?? 1 << 20));
  }

  get counters(): Readonly<GroupCounters> {
    return this.c;
  }

  /** Whether a stream has been seen with KV-cache groups (hybrid attention). */
  isGrouped(streamId: string): boolean {
    return this.grouped.has(streamId);
  }

  applyBatch(stream: StreamRef, batch: EventBatch): void {
    // a fleet with no hybrid stream: a decoded plain batch goes straight through (no lookup, no scan)
    if (this.grouped.size === 0 && batch?.hybrid === false) {
      this.inner.applyBatch(stream, batch);
      return;
    }
    let st = this.grouped.get(stream.streamId);
    const events = batch?.events;
    if (!Array.isArray(events)) {
      this.inner.applyBatch(stream, batch);
      return;
    }
    if (st === undefined) {
      // a decoded batch says whether it needs the group layer; only a hand-built one is scanned
      if (!(batch.hybrid ?? events.some(needsGroupLayer))) {
        this.inner.applyBatch(stream, batch);
        return;
      }
      st = { ref: { ...stream }, primary: null, groups: new Map(), keys: new Map(), unsupported: null };
      this.grouped.set(stream.streamId, st);
    } else st.ref = { ...stream };
    // primary-group events go to the inner index in runs, in order with the others
    let run: KvEvent[] = [];
    const flush = () => {
      if (run.length === 0) return;
      this.inner.applyBatch(stream, { ts: batch.ts, events: run, dpRank: batch.dpRank });
      run = [];
    };
    for (const ev of events) {
      if (ev === null || typeof ev !== "object" || ev.type === "AllBlocksCleared") {
        if (ev?.type === "AllBlocksCleared") {
          for (const g of st.groups.values()) this.clearGroup(g);
          st.keys.clear();
        }
        run.push(ev);
        continue;
      }
      if (ev.type !== "BlockStored" && ev.type !== "BlockRemoved") {
        run.push(ev);
        continue;
      }
      const g = ev.groupIdx ?? null;
      if (ev.type === "BlockStored") this.learn(st, g, ev);
      if (g === null || g === st.primary) {
        if (ev.type === "BlockStored") this.rememberKeys(st, ev);
        run.push(g === null || g === 0 ? ev : { ...ev, groupIdx: null });
        continue;
      }
      const state = st.groups.get(g);
      if (state === undefined) {
        this.c.ignoredGroupEvents++;
        continue;
      }
      flush();
      if (ev.type === "BlockStored") this.store(st, state, ev);
      else this.remove(state, ev);
    }
    flush();
  }

  /** A BlockStored names its group's kind: the first full-attention group becomes primary. */
  private learn(st: GroupedStream, g: number | null, ev: BlockStored): void {
    if (g === null) return;
    const kind = groupKindOf(ev.kvCacheSpecKind);
    if (kind === null) {
      if (g === 0 && st.primary === null && !st.groups.has(0)) st.primary = 0;
      return;
    }
    if (g === st.primary || st.groups.has(g)) return;
    if (kind === "full" && st.primary === null) {
      st.primary = g;
      return;
    }
    if (kind === "other") st.unsupported = ev.kvCacheSpecKind;
    const w = ev.kvCacheSpecSlidingWindow;
    if (kind === "sliding" && !(typeof w === "number" && Number.isInteger(w) && w >= 1)) {
      st.unsupported = `${ev.kvCacheSpecKind} without a window`;
    }
    st.groups.set(g, {
      kind,
      window: kind === "sliding" ? (w as number) : 0,
      claims: new Map(),
      held: new Map(),
    });
  }

  /**
   * The chain keys of a BlockStored's blocks, aligned to its hashes: hash i names block
   * offset + i of the token range, offset = blocks - hashes when a sliding-window event skipped
   * its leading (out-of-window) blocks. Null entries cannot be keyed.
   */
  private keysOf(st: GroupedStream, ev: BlockStored): (string | null)[] {
    const hashes = ev.blockHashes;
    const out: (string | null)[] = new Array(hashes.length).fill(null);
    const bs = ev.blockSize;
    const tokens = ev.tokenIds;
    if (!Number.isInteger(bs) || bs < 1 || !Array.isArray(tokens) || tokens.length < bs) return out;
    const blocks = Math.floor(tokens.length / bs);
    const offset = Math.max(0, blocks - hashes.length);
    const keyable = Math.min(keyableBlocks(ev), blocks - offset);
    if (keyable <= 0) return out;
    const k2 = this.k2;
    const parent = ev.parentBlockHash;
    if (parent === null || parent === undefined) {
      const salt = saltOf(ev);
      if (salt !== null) stringHash64(salt, k2, 0);
      else k2.fill(0);
    } else {
      const pk = typeof parent === "string" ? st.keys.get(parent) : undefined;
      if (pk === undefined) {
        this.c.groupOrphans++;
        return out;
      }
      const sep = pk.indexOf(":");
      k2[0] = Number(pk.slice(0, sep));
      k2[1] = Number(pk.slice(sep + 1));
    }
    namespaceSeed({ model: st.ref.model, lora: loraOf(ev), blockSize: bs }, this.seed);
    for (let b = 0; b < offset + keyable; b++) {
      chainHash(this.seed[0], this.seed[1], k2[0], k2[1], tokens, b * bs, bs, k2, 0);
      if (b >= offset) out[b - offset] = `${k2[0]}:${k2[1]}`;
    }
    return out;
  }

  private rememberKeys(st: GroupedStream, ev: BlockStored): void {
    if (!Array.isArray(ev.blockHashes) || ev.blockHashes.length === 0) return;
    const keys = this.keysOf(st, ev);
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i];
      const h = ev.blockHashes[i];
      if (k !== null && typeof h === "string") this.remember(st, h, k);
    }
  }

  private remember(st: GroupedStream, h: HashKey, k: string): void {
    st.keys.delete(h);
    st.keys.set(h, k);
    if (st.keys.size > this.cap) st.keys.delete(st.keys.keys().next().value as HashKey);
  }

  private store(st: GroupedStream, g: GroupState, ev: BlockStored): void {
    const hashes = ev.blockHashes;
    if (!Array.isArray(hashes)) return;
    const bit = tierBit(ev.medium);
    const keys = this.keysOf(st, ev);
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i];
      if (typeof h !== "string") continue;
      const k = keys[i] ?? st.keys.get(h) ?? null;
      if (keys[i] !== null) this.remember(st, h, keys[i] as string);
      const c = g.claims.get(h);
      if (c === undefined) {
        if (g.claims.size >= this.cap) this.evictOldest(g);
        g.claims.set(h, { key: k, tiers: bit, copies: 0 });
        if (k !== null) g.held.set(k, (g.held.get(k) ?? 0) + 1);
        continue;
      }
      g.claims.delete(h);
      g.claims.set(h, c);
      if ((c.tiers & bit) !== 0 && bit === 1 && c.copies < MAX_EXTRA_COPIES) c.copies++;
      c.tiers |= bit;
      if (c.key === null && k !== null) {
        c.key = k;
        g.held.set(k, (g.held.get(k) ?? 0) + 1);
      }
    }
  }

  private remove(g: GroupState, ev: BlockRemoved): void {
    const hashes = ev.blockHashes;
    if (!Array.isArray(hashes)) return;
    const bit = tierBit(ev.medium);
    for (const h of hashes) {
      const c = typeof h === "string" ? g.claims.get(h) : undefined;
      if (c === undefined || (c.tiers & bit) === 0) continue;
      if (bit === 1 && c.copies > 0) {
        c.copies--;
        continue;
      }
      c.tiers &= ~bit;
      if (c.tiers === 0) this.drop(g, h as HashKey, c);
    }
  }

  private drop(g: GroupState, h: HashKey, c: Claim): void {
    g.claims.delete(h);
    if (c.key === null) return;
    const n = (g.held.get(c.key) ?? 1) - 1;
    if (n <= 0) g.held.delete(c.key);
    else g.held.set(c.key, n);
  }

  private evictOldest(g: GroupState): void {
    const [h, c] = g.claims.entries().next().value as [HashKey, Claim];
    this.drop(g, h, c);
    this.c.groupEvictions++;
  }

  private clearGroup(g: GroupState): void {
    g.claims.clear();
    g.held.clear();
  }

  dropStream(streamId: string): void {
    this.grouped.delete(streamId);
    this.inner.dropStream(streamId);
  }

  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[] {
    const base = this.inner.match(ns, tokenIds);
    if (this.grouped.size === 0) return base;
    return this.coordinate(ns, tokenIds, base);
  }

  /** vLLM's hybrid coordinator rule on every grouped stream of the model (module comment). */
  private coordinate(ns: NamespaceRef, tokenIds: ArrayLike<number>, base: StreamMatch[]): StreamMatch[] {
    const bs = ns.blockSize;
    if (!Number.isInteger(bs) || bs < 1 || tokenIds.length < 2) return base;
    const maxBlocks = Math.floor((tokenIds.length - 1) / bs);
    let reqKeys: string[] | null = null;
    const out: StreamMatch[] = [];
    const byId = new Map<string, StreamMatch>();
    for (const m of base) {
      if (this.grouped.has(m.streamId)) byId.set(m.streamId, m);
      else out.push(m);
    }
    for (const st of this.grouped.values()) {
      if (st.ref.model !== ns.model || st.unsupported !== null) continue;
      if (st.primary === null && st.groups.size === 0) continue;
      const m = byId.get(st.ref.streamId);
      let e = st.primary === null ? maxBlocks : Math.min(m?.matchedBlocks ?? 0, maxBlocks);
      if (e === 0) continue;
      if (st.groups.size > 0) {
        reqKeys ??= requestKeys(ns, tokenIds, maxBlocks, this.seed, this.k2);
        e = hitLength(st.groups, reqKeys, e, bs);
      }
      if (e === 0) continue;
      const t = m?.tiers;
      const tiers: TierCounts = t
        ? { GPU: Math.min(t.GPU, e), CPU: Math.min(t.CPU, e), STORAGE: Math.min(t.STORAGE, e) }
        : { GPU: e, CPU: 0, STORAGE: 0 };
      out.push({ streamId: st.ref.streamId, pod: st.ref.pod, rank: st.ref.rank, matchedBlocks: e, tiers });
    }
    return out.length === 0 ? EMPTY : sortMatches(out);
  }

  streamBlocks(streamId: string): BlockClaim[] {
    return this.inner.streamBlocks(streamId);
  }

  /** A non-primary group's claims of a stream, by engine hash (empty if none). */
  groupBlocks(streamId: string, group: number): HashKey[] {
    const g = this.grouped.get(streamId)?.groups.get(group);
    return g === undefined ? [] : [...g.claims.keys()];
  }

  streamGroups(streamId: string): GroupClaims[] {
    const st = this.grouped.get(streamId);
    if (st === undefined) return [];
    return [...st.groups].map(([group, g]) => ({
      group,
      kind: g.kind,
      window: g.window,
      hashes: [...g.claims.keys()],
    }));
  }

  /** A grouped stream's layout: primary group, the others' kinds and windows. */
  groupLayout(streamId: string): {
    primary: number | null;
    groups: Array<{ group: number; kind: GroupKind; window: number }>;
    unsupported: string | null;
  } | null {
    const st = this.grouped.get(streamId);
    if (st === undefined) return null;
    const groups = [...st.groups].map(([group, g]) => ({ group, kind: g.kind, window: g.window }));
    return { primary: st.primary, groups, unsupported: st.unsupported };
  }

  stats(): IndexStats {
    const s = this.inner.stats();
    let extra = 0;
    for (const st of this.grouped.values()) for (const g of st.groups.values()) extra += g.claims.size;
    return {
      ...s,
      entries: s.entries + extra,
      ignoredEvents: (s.ignoredEvents ?? 0) + this.c.ignoredGroupEvents,
      evictions: s.evictions + this.c.groupEvictions,
    };
  }

  streamEntryCount(streamId: string): number {
    const n = this.inner.streamEntryCount?.(streamId) ?? 0;
    const st = this.grouped.get(streamId);
    if (st === undefined) return n;
    let extra = 0;
    for (const g of st.groups.values()) extra += g.claims.size;
    return n + extra;
  }

  streamTierCounts(streamId: string, out: TierCounts): TierCounts {
    if (this.inner.streamTierCounts) return this.inner.streamTierCounts(streamId, out);
    out.GPU = 0;
    out.CPU = 0;
    out.STORAGE = 0;
    return out;
  }

  /** A peer's catch-up carries the primary group only (docs/engines.md). */
  exportStream(streamId: string): StreamExport | null {
    return this.inner.exportStream?.(streamId) ?? null;
  }

  importStream(ref: StreamRef, data: StreamExport): number {
    return this.inner.importStream?.(ref, data) ?? 0;
  }
}
