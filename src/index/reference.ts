/**
 * Reference backend: the index rules written as plainly as possible with Maps and strings.
 * A block's key is the full namespace + token prefix as a string (no hashing at all), so it is
 * the brute-force oracle for property tests and the "before" baseline for benchmarks. Not for
 * production sizes (memory grows with prefix length).
 *
 * LRU: a stream's Map and the global Map are kept in touch order (delete + set on touch);
 * the first key of each is the least recently touched.
 */
import type { AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, HashKey } from "../protocol/types.ts";
import { namespaceKey } from "./chain-hash.ts";
import {
  aliasKey,
  type IndexCounters,
  type IndexOptions,
  isAliasKey,
  isOtherGroup,
  keyableBlocks,
  loraOf,
  MAX_ALIASES,
  MAX_EXTRA_COPIES,
  newCounters,
  resolveCaps,
  saltOf,
  TIER_NAMES,
  tierBit,
  tiersFromBits,
} from "./rules.ts";
import type { BlockClaim, IndexStats, NamespaceRef, PrefixIndex, StreamMatch, StreamRef } from "./types.ts";

interface RefEntry {
  /** namespace + token prefix, or null when the block is never matched */
  prefix: string | null;
  tiers: number;
  /** extra physical copies per tier (GPU, CPU, STORAGE), saturating at MAX_EXTRA_COPIES */
  copies: [number, number, number];
}

interface RefStream {
  ref: StreamRef;
  entries: Map<HashKey, RefEntry>;
  /** aliases per engine hash (rules.ts `aliasKey`): the highest n in use */
  aliases: Map<HashKey, number>;
}

export class ReferenceIndex implements PrefixIndex {
  private readonly streams = new Map<string, RefStream>();
  /** `${streamId}\0${hash}` in touch order */
  private readonly lru = new Map<string, true>();
  private readonly maxEntries: number;
  private readonly maxPerStream: number;
  private readonly counters: IndexCounters = newCounters();

  constructor(private readonly opts: IndexOptions = {}) {
    const c = resolveCaps(opts);
    this.maxEntries = c.maxEntries;
    this.maxPerStream = c.maxPerStream;
  }

  applyBatch(stream: StreamRef, batch: EventBatch): void {
    let st = this.streams.get(stream.streamId);
    if (!st) {
      st = { ref: { ...stream }, entries: new Map(), aliases: new Map() };
      this.streams.set(stream.streamId, st);
    } else {
      st.ref = { ...stream };
    }
    const events = Array.isArray(batch?.events) ? batch.events : [];
    if (!Array.isArray(batch?.events)) this.counters.invalidEvents++;
    for (const ev of events) {
      if (ev === null || typeof ev !== "object") {
        this.counters.invalidEvents++;
        continue;
      }
      if (ev.type === "BlockStored") this.store(st, ev);
      else if (ev.type === "BlockRemoved") this.remove(st, ev);
      else if (ev.type === "AllBlocksCleared") this.clear(st, ev);
      else this.counters.ignoredEvents++;
    }
  }

  private touch(st: RefStream, hash: HashKey, e: RefEntry): void {
    st.entries.delete(hash);
    st.entries.set(hash, e);
    const g = `${st.ref.streamId}\u0000${hash}`;
    this.lru.delete(g);
    this.lru.set(g, true);
  }

  private deleteEntry(st: RefStream, hash: HashKey): void {
    st.entries.delete(hash);
    this.lru.delete(`${st.ref.streamId}\u0000${hash}`);
  }

  private evictFor(st: RefStream): void {
    if (st.entries.size >= this.maxPerStream) {
      const oldest = st.entries.keys().next().value as HashKey;
      this.deleteEntry(st, oldest);
      this.counters.evictionsStream++;
      this.opts.onEvict?.(st.ref.streamId, "stream");
    }
    if (this.lru.size >= this.maxEntries) {
      const g = this.lru.keys().next().value as string;
      const i = g.indexOf("\u0000");
      const victim = this.streams.get(g.slice(0, i))!;
      this.deleteEntry(victim, g.slice(i + 1));
      this.counters.evictionsGlobal++;
      this.opts.onEvict?.(victim.ref.streamId, "global");
    }
  }

  private store(st: RefStream, ev: BlockStored): void {
    if (isOtherGroup(ev)) {
      this.counters.ignoredEvents++;
      return;
    }
    if (!Array.isArray(ev.blockHashes)) {
      this.counters.invalidEvents++;
      return;
    }
    const bit = tierBit(ev.medium);
    const bs = ev.blockSize;
    const keyable = keyableBlocks(ev);
    const nsk = namespaceKey(st.ref.model, loraOf(ev), bs);
    // a prefix names the namespace at every step, so a chain that crosses namespaces (a LoRA
    // block on a base-model parent) never equals a query's prefix in either namespace
    let prev: string | null;
    if (ev.parentBlockHash === null || ev.parentBlockHash === undefined) {
      const salt = saltOf(ev);
      prev = salt === null ? "" : `salt:${salt}`;
    } else {
      const pe = this.latest(st, ev.parentBlockHash);
      if (!pe) this.counters.orphanStores++;
      prev = pe ? pe.prefix : null;
    }
    for (let i = 0; i < ev.blockHashes.length; i++) {
      const h = ev.blockHashes[i];
      if (typeof h !== "string") {
        this.counters.invalidEvents++;
        prev = null;
        continue;
      }
      const computed =
        prev !== null && i < keyable
          ? `${prev}|${nsk}:${ev.tokenIds.slice(i * bs, (i + 1) * bs).map((t) => t | 0)}`
          : null;
      let key = h;
      let e = st.entries.get(h);
      if (e && computed !== null && e.prefix !== null && e.prefix !== computed) {
        // the same content-only hash at another position: its alias at that position
        const n = st.aliases.get(h) ?? 0;
        let found = 0;
        for (let j = n; j >= 1 && found === 0; j--)
          if (st.entries.get(aliasKey(h, j))?.prefix === computed) found = j;
        if (found === 0 && n >= MAX_ALIASES) {
          prev = computed;
          continue;
        }
        if (found === 0) st.aliases.set(h, n + 1);
        key = aliasKey(h, found || n + 1);
        e = st.entries.get(key);
      }
      if (e) {
        if (e.tiers & bit) {
          if (this.opts.copies !== "set") {
            const t = bit >>> 1;
            e.copies[t] = Math.min(MAX_EXTRA_COPIES, e.copies[t] + 1);
            this.counters.duplicateStores++;
          }
        } else e.tiers |= bit;
        if (computed !== null) e.prefix = computed;
        this.touch(st, key, e);
      } else {
        this.evictFor(st);
        e = { prefix: computed, tiers: bit, copies: [0, 0, 0] };
        st.entries.set(key, e);
        this.lru.set(`${st.ref.streamId}\u0000${key}`, true);
      }
      prev = e.prefix;
    }
  }

  /** The entry a parent hash names: its latest alias if it has any (rules.ts), else its own. */
  private latest(st: RefStream, h: HashKey): RefEntry | undefined {
    for (let j = st.aliases.get(h) ?? 0; j >= 1; j--) {
      const e = st.entries.get(aliasKey(h, j));
      if (e) return e;
    }
    return st.entries.get(h);
  }

  private remove(st: RefStream, ev: BlockRemoved): void {
    if (isOtherGroup(ev)) {
      this.counters.ignoredEvents++;
      return;
    }
    if (!Array.isArray(ev.blockHashes)) {
      this.counters.invalidEvents++;
      return;
    }
    const bit = tierBit(ev.medium);
    for (const h of ev.blockHashes) {
      let key = h;
      let e = typeof h === "string" ? st.entries.get(h) : undefined;
      if (typeof h === "string" && st.aliases.size !== 0) {
        // the latest alias holding this tier goes first (rules.ts)
        let n = st.aliases.get(h) ?? 0;
        while (n > 0 && !st.entries.has(aliasKey(h, n))) n--;
        if (n === 0) st.aliases.delete(h);
        else st.aliases.set(h, n);
        for (let j = n; j >= 1; j--) {
          const ae = st.entries.get(aliasKey(h, j));
          if (ae && ae.tiers & bit) {
            key = aliasKey(h, j);
            e = ae;
            break;
          }
        }
      }
      if (!e || !(e.tiers & bit)) {
        this.counters.unknownRemovals++;
        continue;
      }
      if (e.copies[bit >>> 1] > 0) {
        e.copies[bit >>> 1]--;
        continue;
      }
      e.tiers &= ~bit;
      if (e.tiers === 0) this.deleteEntry(st, key);
    }
  }

  private clear(st: RefStream, _ev: AllBlocksCleared): void {
    for (const h of [...st.entries.keys()]) this.deleteEntry(st, h);
    st.aliases.clear();
  }

  dropStream(streamId: string): void {
    const st = this.streams.get(streamId);
    if (!st) return;
    for (const h of [...st.entries.keys()]) this.deleteEntry(st, h);
    this.streams.delete(streamId);
  }

  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[] {
    const bs = ns.blockSize;
    if (!Number.isInteger(bs) || bs < 1) return [];
    const n = Math.floor(tokenIds.length / bs);
    const prefixes: string[] = [];
    const nsk = namespaceKey(ns.model, ns.lora, bs);
    let p = typeof ns.salt === "string" ? `salt:${ns.salt}` : "";
    for (let i = 0; i < n; i++) {
      p = `${p}|${nsk}:${Array.from({ length: bs }, (_, j) => tokenIds[i * bs + j] | 0)}`;
      prefixes.push(p);
    }
    const out: StreamMatch[] = [];
    for (const st of this.streams.values()) {
      const byPrefix = new Map<string, number>();
      for (const e of st.entries.values()) {
        if (e.prefix !== null) byPrefix.set(e.prefix, (byPrefix.get(e.prefix) ?? 0) | e.tiers);
      }
      let matched = 0;
      const runs = [0, 0, 0];
      let mask = 7;
      for (const pre of prefixes) {
        const t = byPrefix.get(pre) ?? 0;
        if (t === 0) break;
        matched++;
        mask &= t;
        for (let k = 0; k < 3; k++) if (mask & (1 << k)) runs[k]++;
      }
      if (matched > 0) {
        out.push({
          streamId: st.ref.streamId,
          pod: st.ref.pod,
          rank: st.ref.rank,
          matchedBlocks: matched,
          tiers: { GPU: runs[0], CPU: runs[1], STORAGE: runs[2] },
        });
      }
    }
    return sortMatches(out);
  }

  streamBlocks(streamId: string): BlockClaim[] {
    const st = this.streams.get(streamId);
    if (!st) return [];
    return [...st.entries]
      .filter(([hash]) => !isAliasKey(hash))
      .map(([hash, e]) => ({ hash, tiers: tiersFromBits(e.tiers) }));
  }

  streamEntryCount(streamId: string): number {
    return this.streams.get(streamId)?.entries.size ?? 0;
  }

  stats(): IndexStats {
    const blocks = new Set<string>();
    let bytes = 0;
    for (const st of this.streams.values()) {
      for (const [h, e] of st.entries) {
        if (e.prefix !== null) blocks.add(e.prefix);
        bytes += 120 + h.length * 2 + (e.prefix?.length ?? 0) * 2;
      }
    }
    const c = this.counters;
    return {
      entries: this.lru.size,
      blocks: blocks.size,
      streams: this.streams.size,
      approxBytes: bytes,
      evictions: c.evictionsGlobal + c.evictionsStream,
      ...c,
    };
  }
}

/** Deterministic output order: most matched blocks first, then streamId. */
export function sortMatches(out: StreamMatch[]): StreamMatch[] {
  return out.sort((a, b) =>
    b.matchedBlocks !== a.matchedBlocks
      ? b.matchedBlocks - a.matchedBlocks
      : a.streamId < b.streamId
        ? -1
        : 1,
  );
}

export { TIER_NAMES };
