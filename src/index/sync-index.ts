/**
 * The production backend: struct-of-arrays in typed arrays, open addressing, no JS object per
 * entry. The rules are in index.ts / README.md; this file is about layout and speed.
 *
 * Entries ((block, stream) claims, one per engine hash a stream holds), stride 8 int32 = 32 B:
 *   META   stream << 14 | extra copies << 5 | hashKind << 3 | tier bits (GPU 1, CPU 2, STORAGE 4);
 *          extra copies: 3 bits per tier (GPU 5-7, CPU 8-10, STORAGE 11-13), the number of
 *          further physical copies of the hash the engine holds on that tier (saturating at 7)
 *   BLOCK  index block, -1 when the entry is kept for removal only (never matched);
 *          next free entry while the record is free
 *   HHI/HLO engine hash: the 8 bytes of a "u"/"n" HashKey; for other forms a 64-bit digest
 *          of the string, which is kept verbatim in a side Map (kind 2)
 *   SPREV/SNEXT  the stream's LRU list (head = most recently touched): clear/drop walk it
 *   THI/TLO  the entry's touch stamp (a 53-bit counter): the global LRU order; the global
 *          least recently touched entry is the oldest of the streams' LRU tails
 * Blocks, stride 4 int32 = 16 B: key hi, key lo, claims, len << 5 | class.
 *   A block's claims are a small multiset of (stream << 3 | tiers) values, contiguous so match
 *   reads them sequentially (no pointer chasing): class 0 = one value inline in the block;
 *   class k >= 1 = a vector of capacity 2^k in the claims arena (per-class free lists).
 *   A key already encodes its namespace (the seed is hashed in at every step).
 * Two open-addressing tables, (stream, engine hash) -> entry and (key hi, key lo) -> block:
 * linear probing over any table size (multiply-shift home), a slot holds index + 1 in its low
 * 27 bits and a 5-bit fingerprint of the hash above them (probes rarely touch a record that is
 * not the one looked for), deletions leave tombstones (none at a cluster's end). Each table is
 * 64 shards (by the hash's top bits); a shard is rebuilt at 85% (live + tombstones) to 50% live
 * (25% below 256k live records): all shards from one pass over the records while the index is
 * small, else that shard alone from its own slots.
 * Records live in pages of 2^16 (entries 2 MiB, blocks 1 MiB): the first page grows x4 by
 * copying until it is full, then growth adds a page. Nothing is copied or reallocated as a large
 * index grows (no event-loop stall at 10M entries, and the process's external memory grows by
 * the index's own size only, which keeps V8 from starting full GCs for allocations it made and
 * dropped). Record x of a kind: page x >>> pageBits, offset (x & pageMask) * stride.
 *
 * Why one file over the ~500-line rule: everything below is one data structure. Apply (store,
 * remove, evict) and match walk the same typed-array pages, hash tables and claim vectors, and
 * every helper keeps an invariant of the others (a slot's fingerprint, a block's claim class, a
 * stream's LRU links). Split across modules, the raw arrays and their counters would become
 * shared mutable state with no single owner, passed into every helper on the hot paths. The rules
 * (what an event means) are already apart in rules.ts and chain-hash.ts; what is left here is
 * layout and speed.
 */
import { hashFromInt64NegParts, hashFromUint64Parts } from "../protocol/hash.ts";
import type { BlockRemoved, BlockStored, EventBatch, HashKey } from "../protocol/types.ts";
import { chainHash, namespaceKey, stringHash64 } from "./chain-hash.ts";
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
  tierBit,
  tiersFromBits,
} from "./rules.ts";
import type {
  BlockClaim,
  IndexStats,
  NamespaceRef,
  PrefixIndex,
  StreamExport,
  StreamMatch,
  StreamRef,
  TierCounts,
} from "./types.ts";

const ES = 8;
const META = 0;
/** META: the stream index starts at this bit (up to 2^18 streams) */
const S_SHIFT = 14;
const MAX_STREAMS = 1 << 18;
/** META: bits compared by findEntry (stream and hash kind) */
const ID_MASK = ~0x3fff | 0x18;
/** saturating per-tier count of extra copies (3 bits) */
const MAX_EXTRA = MAX_EXTRA_COPIES;
const BLOCK = 1;
/** StreamExport meta flag: the entry has a block (its key follows) */
const EXPORT_KEYED = 1 << 12;
const HHI = 2;
const HLO = 3;
const SPREV = 4;
const SNEXT = 5;
const THI = 6;
const TLO = 7;
const TWO_32 = 4294967296;

const BS = 4;
const KHI = 0;
const KLO = 1;
const VEC = 2;
const LC = 3;

/** slot = (index + 1) | fingerprint << 27; IDX alone marks a deleted slot (tombstone) */
const IDX = 0x7ffffff;
const TOMB = IDX;
const MAX_RECORDS = IDX - 2;
/** table sizing: rebuild above MAX_LOAD (live + tombstones), to REBUILD_LOAD live */
const MAX_LOAD = 0.85;
/** claim vectors of this class and up (capacity >= 16) carry their holders' bitmaps */
const BM_CLS = 4;
/** match output order keys: (n - matched) * RANK_SPAN + the stream's rank (< MAX_STREAMS) */
const RANK_SPAN = MAX_STREAMS;
/** no stored bitmaps above this many words (32 streams each): 3 x 64 ints per shared block at most */
const BM_MAX_W = 64;
/** match: blocks hashed and looked up per chunk */
const CHUNK = 16;
const REBUILD_LOAD = 0.5;
/**
 * Below this many live records a table is rebuilt to SMALL_LOAD instead: a growing index
 * rebuilds half as often (x3.4 per rebuild instead of x1.7) and probes shorter runs; above it,
 * where the bytes per entry count, tables go back to REBUILD_LOAD.
 */
const SMALL_TABLE = 1 << 18;
const SMALL_LOAD = 0.25;

const KIND_U = 0;
const KIND_N = 1;
const KIND_STR = 2;

/** records per page (default): 2 MiB of entries, 1 MiB of blocks */
const PAGE_BITS = 16;

/** the first page's next capacity: x4, up to a full page and at most `max` (the caps + 1) */
function grownFirstPage(cur: number, page: number, max: number): number {
  return Math.max(cur + 1, Math.min(Math.max(cur, 1024) * 4, page, max));
}

/** pages for `cap` records: one of min(cap, page) records, or full pages */
function newPages(cap: number, stride: number, bits: number): Int32Array[] {
  const page = 1 << bits;
  if (cap <= page) return [new Int32Array(cap * stride)];
  return Array.from({ length: Math.ceil(cap / page) }, () => new Int32Array(page * stride));
}

/** add room for at least one record: grow the first page by copying, or add a full page */
function growPages(pages: Int32Array[], cap: number, stride: number, bits: number, max: number): number {
  const page = 1 << bits;
  if (cap < page) {
    const n = grownFirstPage(cap, page, max);
    const a = new Int32Array(n * stride);
    a.set(pages[0]);
    pages[0] = a;
    return n;
  }
  pages.push(new Int32Array(page * stride));
  return cap + page;
}

/**
 * Each table is split into SHARDS independent open-addressing tables by the top SHARD_BITS of
 * the hash, each rebuilt on its own: a rebuild re-inserts 1/64 of the table, so no single event
 * pays for the whole table (a 10M-entry index would otherwise stall its event loop for most of a
 * second), and the shards, filling at the same rate, rebuild at different events.
 * Hash bits: 0-4 fingerprint, 5-25 home within the shard, 26-31 shard.
 */
const SHARD_BITS = 6;
const SHARDS = 1 << SHARD_BITS;
const SHARD_SHIFT = 32 - SHARD_BITS;
/**
 * Below this many live records a full shard triggers a rebuild of every shard in one sequential
 * pass over the records (at most ~30 ms here); above it only that shard is rebuilt.
 */
const WHOLE_REBUILD = 1 << 19;
/**
 * A shard's rebuild reads the records of this many of its slots before placing them: the reads
 * (random: one cache miss each) overlap. +7% apply at steady state (bench/ab, fresh processes).
 */
const REBUILD_AHEAD = 32;

/** Options of the typed-array backend beyond the rules' (sizing and test knobs). */
export interface SyncIndexOptions extends IndexOptions {
  /** records to allocate up front (no growth until then) */
  initialCapacity?: number;
  /** records per page as a power of two (default 16; tests use small pages to cross page boundaries) */
  pageBits?: number;
  /**
   * below this many records a full shard rebuilds every shard (default 2^19; tests set 0 to
   * exercise the per-shard rebuilds a large index uses)
   */
  wholeRebuildBelow?: number;
}
/** home slot of a hash in a shard of `size` slots (multiply-shift over 21 bits, exact in doubles) */
const INV_2_21 = 1 / 2097152;
function home(hh: number, size: number): number {
  return ((hh >>> 5) & 0x1fffff) * size * INV_2_21;
}

/**
 * Delete slot i: a tombstone, unless the cluster ends right after it, in which case the slot
 * and any tombstones just before it become empty. Returns the change in the tombstone count.
 */
function clearSlot(slots: Int32Array, i: number): number {
  const size = slots.length;
  if (slots[i + 1 === size ? 0 : i + 1] !== 0) {
    slots[i] = TOMB;
    return 1;
  }
  slots[i] = 0;
  let freed = 0;
  let j = i === 0 ? size - 1 : i - 1;
  while (slots[j] === TOMB) {
    slots[j] = 0;
    freed++;
    j = j === 0 ? size - 1 : j - 1;
  }
  return -freed;
}

/** slots for a shard with `live` records (SMALL_TABLE is for the whole table: all shards) */
function tableSize(live: number): number {
  return Math.max(64, Math.ceil(live / (live < SMALL_TABLE >> SHARD_BITS ? SMALL_LOAD : REBUILD_LOAD)));
}

/** SHARDS empty tables sized for `records` in all */
function newShards(records: number): Int32Array[] {
  const per = tableSize(Math.ceil(records / SHARDS));
  return Array.from({ length: SHARDS }, () => new Int32Array(per));
}

function mixHash(a: number, b: number, c: number): number {
  let h = a ^ Math.imul(b, 0x9e3779b1) ^ Math.imul(c, 0x85ebca77);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return h;
}

interface StreamInfo {
  ref: StreamRef;
  /** cached namespace of the last BlockStored (lora, block size) for this stream */
  lastLora: string | null | undefined;
  lastBs: number;
  lastNs: number;
}

export class SyncPrefixIndex implements PrefixIndex {
  private readonly maxEntries: number;
  private readonly maxPerStream: number;
  private readonly onEvict: IndexOptions["onEvict"];
  private readonly countCopies: boolean;
  private readonly counters: IndexCounters = newCounters();

  /** records per page = 1 << pb; pm = that - 1 */
  private readonly pb: number;
  private readonly pm: number;
  /** below this many records a full shard rebuilds every shard */
  private readonly wholeRebuild: number;

  // entries
  private readonly ep: Int32Array[];
  private eCap: number;
  private eUsed = 0;
  private eFree = -1;
  private count = 0;
  /** touch stamps handed out so far (stamp of the next touch) */
  private clock = 0;
  /**
   * Global eviction: a min-heap of streams by their LRU tail's stamp, built at the first global
   * eviction. Keys go stale when a tail changes, but only ever upwards (a new tail was touched
   * later), so the top is checked against its stream's tail when popped and re-keyed if stale.
   */
  private heapOn = false;
  private hStream = new Int32Array(16);
  private hKey = new Float64Array(16);
  private hLen = 0;
  private inHeap = new Uint8Array(16);
  private readonly strHashes = new Map<number, string>();
  /**
   * Per stream, per engine hash: the highest alias n in use (content-only hashes at several
   * positions; rules.ts `aliasKey`). Empty for chained-hash engines, so their hot paths only
   * test `aliases.size`.
   */
  private readonly aliases = new Map<number, Map<HashKey, number>>();
  /** (stream, engine hash) -> entry: SHARDS tables, their live and tombstone counts */
  private readonly eTabs: Int32Array[];
  private readonly eLive = new Int32Array(SHARDS);
  private readonly eTombs = new Int32Array(SHARDS);
  /**
   * bumped by every change of eTabs. A findEntry that misses keeps its key's hash (eMissHash)
   * and the slot where the key would go (eHint, valid while eHintVer = eVer) for the insert that
   * follows
   */
  private eVer = 0;
  private eHint = 0;
  private eHintVer = -1;
  private eMissHash = 0;

  // blocks
  private readonly bp: Int32Array[];
  private bCap: number;
  private bUsed = 0;
  private bFree = -1;
  private blockCount = 0;
  /** (key hi, key lo) -> block */
  private readonly bTabs: Int32Array[];
  private readonly bLive = new Int32Array(SHARDS);
  private readonly bTombs = new Int32Array(SHARDS);
  private bVer = 0;
  private bHint = 0;
  private bHintVer = -1;
  private bMissHash = 0;

  // claims arena (vectors of stream << 3 | tiers)
  private cv = new Int32Array(1024);
  private cvUsed = 0;
  private readonly cvFree: number[][] = [];

  // streams
  private readonly streamIdx = new Map<string, number>();
  private streams: (StreamInfo | null)[] = [];
  private sHead = new Int32Array(16).fill(-1);
  private sTail = new Int32Array(16).fill(-1);
  private sCount = new Int32Array(16);
  private freeStreams: number[] = [];

  // namespaces
  private readonly nsIds = new Map<string, number>();
  /** the namespace of each id (an export names those of its stream's model) */
  private readonly nsRefs: NamespaceRef[] = [];
  private nsSeeds = new Int32Array(32);

  // scratch (no per-call allocation on hot paths)
  private readonly h2 = new Int32Array(2);
  private readonly k2 = new Int32Array(2);
  /** store: the event's chain keys, computed ahead */
  private sKeys = new Int32Array(256);
  /** store / remove: the event's engine hashes parsed by touchSlots (hi, lo, kind) */
  private pHash = new Int32Array(384);
  /** sink for read-ahead loads (keeps them from being optimised away) */
  private sink = 0;
  /**
   * match state, bitmaps over stream indexes (mW words): the streams still matching (any tier,
   * and per tier GPU / CPU / STORAGE), the current block's holders per tier, and per stream the
   * block index where its run (any tier, per tier) ended
   */
  private mW = 1;
  /** vectors of this class and up carry bitmaps (BM_CLS; never while mW > BM_MAX_W) */
  private bmCls = BM_CLS;
  private mAny = new Int32Array(1);
  private mAlive = new Int32Array(3);
  private mBlk = new Int32Array(3);
  private mActive = new Int32Array(1);
  private mEnd = new Int32Array(32 * 4);
  private mCands = new Int32Array(32);
  /** match output order: streams' ranks by streamId (recomputed after a stream is added) */
  private ranksDirty = true;
  private rankOf = new Int32Array(32);
  private byRank = new Int32Array(32);
  private mOrder = new Float64Array(32);
  private readonly mKeys = new Int32Array(CHUNK * 2);
  private readonly mBlks = new Int32Array(CHUNK);

  constructor(opts: SyncIndexOptions = {}) {
    const c = resolveCaps(opts);
    if (c.maxEntries > MAX_RECORDS) throw new RangeError(`maxEntries must be <= ${MAX_RECORDS}`);
    this.maxEntries = c.maxEntries;
    this.maxPerStream = c.maxPerStream;
    this.onEvict = opts.onEvict;
    this.countCopies = opts.copies !== "set";
    const init = Math.max(16, Math.min(opts.initialCapacity ?? 1024, this.maxEntries));
    const pb = opts.pageBits ?? PAGE_BITS;
    if (!Number.isInteger(pb) || pb < 2 || pb > 24)
      throw new RangeError("pageBits must be an integer in 2..24");
    this.pb = pb;
    this.pm = (1 << pb) - 1;
    this.wholeRebuild = opts.wholeRebuildBelow ?? WHOLE_REBUILD;
    this.ep = newPages(init, ES, pb);
    this.eCap = this.ep.length === 1 ? init : this.ep.length << pb;
    this.bp = newPages(init, BS, pb);
    this.bCap = this.eCap;
    this.eTabs = newShards(init);
    this.bTabs = newShards(init);
  }

  // ---------------------------------------------------------------- streams / namespaces

  private streamOf(ref: StreamRef): number {
    let s = this.streamIdx.get(ref.streamId);
    if (s !== undefined) {
      const info = this.streams[s]!;
      if (info.ref.model !== ref.model || info.ref.pod !== ref.pod || info.ref.rank !== ref.rank) {
        info.ref = { ...ref };
        info.lastBs = -1;
      }
      return s;
    }
    s = this.freeStreams.length > 0 ? this.freeStreams.pop()! : this.streams.length;
    if (s >= MAX_STREAMS) return -1;
    if (s === this.streams.length) this.streams.push(null);
    this.streams[s] = { ref: { ...ref }, lastLora: undefined, lastBs: -1, lastNs: -1 };
    this.streamIdx.set(ref.streamId, s);
    this.ranksDirty = true;
    if (s >= this.sHead.length) {
      const n = this.sHead.length * 2;
      const grow = (a: Int32Array, fill: number) => {
        const x = new Int32Array(n).fill(fill);
        x.set(a);
        return x;
      };
      this.sHead = grow(this.sHead, -1);
      this.sTail = grow(this.sTail, -1);
      this.sCount = grow(this.sCount, 0);
      const ih = new Uint8Array(n);
      ih.set(this.inHeap);
      this.inHeap = ih;
      const w = Math.ceil(n / 32);
      if (w !== this.mW) {
        this.relayoutClaims(w); // sets mW
        this.mAny = new Int32Array(w);
        this.mAlive = new Int32Array(w * 3);
        this.mBlk = new Int32Array(w * 3);
        this.mActive = new Int32Array(w);
        this.mCands = new Int32Array(w * 32);
        this.rankOf = new Int32Array(w * 32);
        this.byRank = new Int32Array(w * 32);
        this.mOrder = new Float64Array(w * 32);
        this.mEnd = new Int32Array(w * 32 * 4);
      }
    }
    this.sHead[s] = -1;
    this.sTail[s] = -1;
    this.sCount[s] = 0;
    return s;
  }

  private nsIdOf(model: string, lora: string | null, bs: number): number {
    const key = namespaceKey(model, lora, bs);
    let id = this.nsIds.get(key);
    if (id === undefined) {
      id = this.nsIds.size;
      this.nsIds.set(key, id);
      this.nsRefs.push({ model, lora, blockSize: bs });
      if (id * 2 + 2 > this.nsSeeds.length) {
        const x = new Int32Array(this.nsSeeds.length * 2);
        x.set(this.nsSeeds);
        this.nsSeeds = x;
      }
      stringHash64(key, this.nsSeeds, id * 2);
    }
    return id;
  }

  // ---------------------------------------------------------------- engine-hash parsing

  /** Parses a HashKey into h2 (hi, lo); returns its kind. */
  private parseHash(h: string): number {
    const c0 = h.charCodeAt(0);
    if (h.length === 9 && (c0 === 0x75 || c0 === 0x6e)) {
      const c1 = h.charCodeAt(1);
      const c2 = h.charCodeAt(2);
      const c3 = h.charCodeAt(3);
      const c4 = h.charCodeAt(4);
      const c5 = h.charCodeAt(5);
      const c6 = h.charCodeAt(6);
      const c7 = h.charCodeAt(7);
      const c8 = h.charCodeAt(8);
      if ((c1 | c2 | c3 | c4 | c5 | c6 | c7 | c8) < 256) {
        this.h2[0] = (c1 << 24) | (c2 << 16) | (c3 << 8) | c4;
        this.h2[1] = (c5 << 24) | (c6 << 16) | (c7 << 8) | c8;
        return c0 === 0x75 ? KIND_U : KIND_N;
      }
    }
    stringHash64(h, this.h2, 0);
    return KIND_STR;
  }

  private hashKeyOf(ent: number): HashKey {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    const kind = (e[o + META] >>> 3) & 3;
    if (kind === KIND_STR) return this.strHashes.get(ent)!;
    const hi = e[o + HHI] >>> 0;
    const lo = e[o + HLO] >>> 0;
    return kind === KIND_U ? hashFromUint64Parts(hi, lo) : hashFromInt64NegParts(hi, lo);
  }

  // ---------------------------------------------------------------- entry table

  private entryHash(ent: number): number {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    return mixHash(e[o + HHI], e[o + HLO], e[o + META] >>> S_SHIFT);
  }

  /** Entry of (stream, hash) whose parsed form is in h2/kind, or -1. */
  private findEntry(s: number, kind: number, h: string): number {
    const hi = this.h2[0];
    const lo = this.h2[1];
    const ep = this.ep;
    const pb = this.pb;
    const pm = this.pm;
    const meta = (s << S_SHIFT) | (kind << 3);
    const hh = mixHash(hi, lo, s);
    const slots = this.eTabs[hh >>> SHARD_SHIFT];
    const size = slots.length;
    const fp = hh & 31;
    let i = home(hh, size) | 0;
    let free = -1;
    for (;;) {
      const v = slots[i];
      if (v === 0) {
        // where an insert of this key goes (first tombstone on the way, else this empty slot)
        this.eHint = free === -1 ? i : free;
        this.eHintVer = this.eVer;
        this.eMissHash = hh;
        return -1;
      }
      if (v === TOMB) {
        if (free === -1) free = i;
      } else if (v >>> 27 === fp) {
        const x = (v & IDX) - 1;
        const e = ep[x >>> pb];
        const o = (x & pm) * ES;
        if (e[o + HHI] === hi && e[o + HLO] === lo && (e[o + META] & ID_MASK) === meta) {
          if (kind !== KIND_STR || this.strHashes.get(x) === h) return x;
        }
      }
      if (++i === size) i = 0;
    }
  }

  /**
   * Insert entry `ent`, whose key the last findEntry looked up and missed: its hash is that
   * lookup's, and its slot is reused unless the table changed since. Rebuilds the table when it
   * gets too full.
   */
  private insertSlot(ent: number): void {
    const hh = this.eMissHash;
    const k = hh >>> SHARD_SHIFT;
    const live = ++this.eLive[k];
    if (live + this.eTombs[k] > this.eTabs[k].length * MAX_LOAD) {
      if (this.count < this.wholeRebuild) this.rebuildEntryTables(ent);
      else this.rebuildEntryShard(k);
    }
    const slots = this.eTabs[k];
    const size = slots.length;
    if (this.eHintVer === this.eVer) {
      const i = this.eHint;
      if (slots[i] === TOMB) this.eTombs[k]--;
      slots[i] = (ent + 1) | ((hh & 31) << 27);
      this.eVer++;
      return;
    }
    let i = home(hh, size) | 0;
    for (;;) {
      const v = slots[i];
      if (v === 0) break;
      if (v === TOMB) {
        this.eTombs[k]--;
        break;
      }
      if (++i === size) i = 0;
    }
    slots[i] = (ent + 1) | ((hh & 31) << 27);
    this.eVer++;
  }

  private deleteSlot(ent: number): void {
    const hh = this.entryHash(ent);
    const k = hh >>> SHARD_SHIFT;
    const slots = this.eTabs[k];
    const size = slots.length;
    let i = home(hh, size) | 0;
    while ((slots[i] & IDX) !== ent + 1 || slots[i] === TOMB) if (++i === size) i = 0;
    this.eTombs[k] += clearSlot(slots, i);
    this.eLive[k]--;
    this.eVer++;
  }

  /**
   * Every shard re-laid out for its live count, from one sequential pass over the records (cheaper
   * per entry than a shard's rebuild, which reads its records at random), skipping `pending`
   * (being inserted by the caller). Used while the index is small (wholeRebuild).
   */
  private rebuildEntryTables(pending: number): void {
    const tabs = this.eTabs;
    for (let k = 0; k < SHARDS; k++) {
      tabs[k] = new Int32Array(tableSize(this.eLive[k]));
      this.eTombs[k] = 0;
    }
    const pb = this.pb;
    for (let p = 0; p << pb < this.eUsed; p++) {
      const e = this.ep[p];
      const first = p << pb;
      const n = Math.min(this.eUsed - first, 1 << pb);
      for (let r = 0; r < n; r++) {
        const o = r * ES;
        const x = first + r;
        if (e[o + META] === 0 || x === pending) continue; // free records have no tier bit
        const hh = mixHash(e[o + HHI], e[o + HLO], e[o + META] >>> S_SHIFT);
        const slots = tabs[hh >>> SHARD_SHIFT];
        const size = slots.length;
        let i = home(hh, size) | 0;
        while (slots[i] !== 0) if (++i === size) i = 0;
        slots[i] = (x + 1) | ((hh & 31) << 27);
      }
    }
    this.eVer++;
  }

  /**
   * Shard k re-laid out for its live count (which includes an entry being inserted): its slots
   * move to a fresh table (a slot keeps its fingerprint; the record is read for its home).
   */
  private rebuildEntryShard(k: number): void {
    const old = this.eTabs[k];
    const size = tableSize(this.eLive[k]);
    const slots = new Int32Array(size);
    const ep = this.ep;
    const pb = this.pb;
    const pm = this.pm;
    // in chunks of REBUILD_AHEAD slots: first read each slot's record (independent loads the
    // CPU overlaps), then place them
    let acc = 0;
    for (let c = 0; c < old.length; c += REBUILD_AHEAD) {
      const end = Math.min(c + REBUILD_AHEAD, old.length);
      for (let j = c; j < end; j++) {
        const v = old[j];
        if (v === 0 || v === TOMB) continue;
        const x = (v & IDX) - 1;
        acc ^= ep[x >>> pb][(x & pm) * ES + HHI];
      }
      for (let j = c; j < end; j++) {
        const v = old[j];
        if (v === 0 || v === TOMB) continue;
        const x = (v & IDX) - 1;
        const e = ep[x >>> pb];
        const o = (x & pm) * ES;
        let i = home(mixHash(e[o + HHI], e[o + HLO], e[o + META] >>> S_SHIFT), size) | 0;
        while (slots[i] !== 0) if (++i === size) i = 0;
        slots[i] = v;
      }
    }
    this.sink ^= acc;
    this.eTabs[k] = slots;
    this.eTombs[k] = 0;
    this.eVer++;
  }

  private allocEntry(): number {
    if (this.eFree !== -1) {
      const x = this.eFree;
      this.eFree = this.ep[x >>> this.pb][(x & this.pm) * ES + BLOCK];
      return x;
    }
    if (this.eUsed === this.eCap) this.eCap = growPages(this.ep, this.eCap, ES, this.pb, this.maxEntries + 1);
    return this.eUsed++;
  }

  /**
   * A new entry of stream s for `h`, right after the lookup of `h` that missed (its kind; h2 holds
   * its parts, and insertSlot takes the slot the lookup ended on), linked as the stream's most
   * recent. `low`: the META bits below the kind (tiers, and extra copies from bit 5). The store
   * path, an alias's store and a stream's import all make entries here.
   */
  private newEntry(s: number, kind: number, h: HashKey, low: number): number {
    const hi = this.h2[0];
    const lo = this.h2[1];
    const ent = this.allocEntry();
    const a = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    a[o + META] = (s << S_SHIFT) | (kind << 3) | low;
    a[o + BLOCK] = -1;
    a[o + HHI] = hi;
    a[o + HLO] = lo;
    if (kind === KIND_STR) this.strHashes.set(ent, h);
    this.count++;
    this.sCount[s]++;
    this.insertSlot(ent);
    this.linkHead(ent, s);
    return ent;
  }

  // ---------------------------------------------------------------- blocks

  private findBlock(hi: number, lo: number): number {
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    const hh = mixHash(hi, lo, 0);
    const slots = this.bTabs[hh >>> SHARD_SHIFT];
    const size = slots.length;
    const fp = hh & 31;
    let i = home(hh, size) | 0;
    let free = -1;
    for (;;) {
      const v = slots[i];
      if (v === 0) {
        this.bHint = free === -1 ? i : free;
        this.bHintVer = this.bVer;
        this.bMissHash = hh;
        return -1;
      }
      if (v === TOMB) {
        if (free === -1) free = i;
      } else if (v >>> 27 === fp) {
        const x = (v & IDX) - 1;
        const b = bp[x >>> pb];
        const o = (x & pm) * BS;
        if (b[o + KHI] === hi && b[o + KLO] === lo) return x;
      }
      if (++i === size) i = 0;
    }
  }

  /**
   * The block keyed (hi, lo) if it is the record just after or just before block `x`, else -1.
   * A chain stored by one event gets its new blocks from consecutive allocations: from the end
   * of the records (ascending), or from the free list, which hands out the records of blocks
   * freed together, as they usually are (an engine evicts a request's blocks in chain order,
   * or in reverse), in the reverse order of their freeing: adjacent again. Exact: a live
   * block's key is unique and its LC word is never 0 (a freed record's is).
   */
  private nextInChain(x: number, hi: number, lo: number): number {
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    let y = x + 1;
    if (y < this.bUsed) {
      const b = bp[y >>> pb];
      const o = (y & pm) * BS;
      if (b[o + KLO] === lo && b[o + KHI] === hi && b[o + LC] !== 0) return y;
    }
    y = x - 1;
    if (y >= 0) {
      const b = bp[y >>> pb];
      const o = (y & pm) * BS;
      if (b[o + KLO] === lo && b[o + KHI] === hi && b[o + LC] !== 0) return y;
    }
    return -1;
  }

  private blockOf(hi: number, lo: number): number {
    const found = this.findBlock(hi, lo);
    if (found !== -1) return found;
    let x: number;
    if (this.bFree !== -1) {
      x = this.bFree;
      this.bFree = this.bp[x >>> this.pb][(x & this.pm) * BS + KHI];
    } else {
      if (this.bUsed === this.bCap)
        this.bCap = growPages(this.bp, this.bCap, BS, this.pb, this.maxEntries + 1);
      x = this.bUsed++;
    }
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    b[o + KHI] = hi;
    b[o + KLO] = lo;
    b[o + VEC] = 0;
    b[o + LC] = 0;
    this.blockCount++;
    this.insertBlockSlot(x);
    return x;
  }

  private blockHash(x: number): number {
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    return mixHash(b[o + KHI], b[o + KLO], 0);
  }

  /** Insert block `x`, whose key the last findBlock missed (as insertSlot). */
  private insertBlockSlot(x: number): void {
    const hh = this.bMissHash;
    const k = hh >>> SHARD_SHIFT;
    const live = ++this.bLive[k];
    if (live + this.bTombs[k] > this.bTabs[k].length * MAX_LOAD) {
      if (this.blockCount < this.wholeRebuild) this.rebuildBlockTables(x);
      else this.rebuildBlockShard(k);
    }
    const slots = this.bTabs[k];
    const size = slots.length;
    if (this.bHintVer === this.bVer) {
      const i = this.bHint;
      if (slots[i] === TOMB) this.bTombs[k]--;
      slots[i] = (x + 1) | ((hh & 31) << 27);
      this.bVer++;
      return;
    }
    let i = home(hh, size) | 0;
    for (;;) {
      const v = slots[i];
      if (v === 0) break;
      if (v === TOMB) {
        this.bTombs[k]--;
        break;
      }
      if (++i === size) i = 0;
    }
    slots[i] = (x + 1) | ((hh & 31) << 27);
    this.bVer++;
  }

  /** Every block shard re-laid out (as rebuildEntryTables). */
  private rebuildBlockTables(pending: number): void {
    const tabs = this.bTabs;
    for (let k = 0; k < SHARDS; k++) {
      tabs[k] = new Int32Array(tableSize(this.bLive[k]));
      this.bTombs[k] = 0;
    }
    const pb = this.pb;
    for (let p = 0; p << pb < this.bUsed; p++) {
      const b = this.bp[p];
      const first = p << pb;
      const n = Math.min(this.bUsed - first, 1 << pb);
      for (let r = 0; r < n; r++) {
        const o = r * BS;
        const x = first + r;
        // live blocks always have at least one claim; free ones have none
        if (b[o + LC] === 0 || x === pending) continue;
        const hh = mixHash(b[o + KHI], b[o + KLO], 0);
        const slots = tabs[hh >>> SHARD_SHIFT];
        const size = slots.length;
        let i = home(hh, size) | 0;
        while (slots[i] !== 0) if (++i === size) i = 0;
        slots[i] = (x + 1) | ((hh & 31) << 27);
      }
    }
    this.bVer++;
  }

  /** Shard k of the block table re-laid out for its live count (as rebuildEntryShard). */
  private rebuildBlockShard(k: number): void {
    const old = this.bTabs[k];
    const size = tableSize(this.bLive[k]);
    const slots = new Int32Array(size);
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    // in chunks, records read first (as rebuildEntryShard)
    let acc = 0;
    for (let c = 0; c < old.length; c += REBUILD_AHEAD) {
      const end = Math.min(c + REBUILD_AHEAD, old.length);
      for (let j = c; j < end; j++) {
        const v = old[j];
        if (v === 0 || v === TOMB) continue;
        const x = (v & IDX) - 1;
        acc ^= bp[x >>> pb][(x & pm) * BS + KHI];
      }
      for (let j = c; j < end; j++) {
        const v = old[j];
        if (v === 0 || v === TOMB) continue;
        const x = (v & IDX) - 1;
        const b = bp[x >>> pb];
        const o = (x & pm) * BS;
        let i = home(mixHash(b[o + KHI], b[o + KLO], 0), size) | 0;
        while (slots[i] !== 0) if (++i === size) i = 0;
        slots[i] = v;
      }
    }
    this.sink ^= acc;
    this.bTabs[k] = slots;
    this.bTombs[k] = 0;
    this.bVer++;
  }

  private freeBlock(x: number): void {
    const hh = this.blockHash(x);
    const k = hh >>> SHARD_SHIFT;
    const slots = this.bTabs[k];
    const size = slots.length;
    let i = home(hh, size) | 0;
    while ((slots[i] & IDX) !== x + 1 || slots[i] === TOMB) if (++i === size) i = 0;
    this.bTombs[k] += clearSlot(slots, i);
    this.bLive[k]--;
    this.bVer++;
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    b[o + LC] = 0;
    b[o + KHI] = this.bFree;
    this.bFree = x;
    this.blockCount--;
  }

  // ---------------------------------------------------------------- claim vectors

  /**
   * ints of a class-cls chunk: the vector, then for cls >= BM_CLS the holders' bitmaps and a
   * "shared" word: non-zero once some stream has had two claims in the vector at once (then a
   * removal must rescan that stream's other claims for its bits; while zero it just clears them)
   */
  private chunkSize(cls: number): number {
    return (1 << cls) + (cls >= this.bmCls ? 3 * this.mW + 1 : 0);
  }

  private cvAlloc(cls: number): number {
    const free = this.cvFree[cls];
    if (free !== undefined && free.length > 0) return free.pop()!;
    const size = this.chunkSize(cls);
    if (this.cvUsed + size > this.cv.length) {
      let n = this.cv.length;
      while (n < this.cvUsed + size) n = n < 1 << 22 ? n * 2 : Math.ceil(n * 1.25);
      const a = new Int32Array(n);
      a.set(this.cv);
      this.cv = a;
    }
    const off = this.cvUsed;
    this.cvUsed += size;
    return off;
  }

  private cvRelease(off: number, cls: number): void {
    let free = this.cvFree[cls];
    if (free === undefined) {
      free = [];
      this.cvFree[cls] = free;
    }
    free.push(off);
  }

  /**
   * The bitmaps of a class >= BM_CLS vector at `off` (3 x mW words after the vector: GPU, CPU,
   * STORAGE holders by stream index) rebuilt from its len claims.
   */
  private buildBitmaps(off: number, cls: number, len: number): void {
    const cv = this.cv;
    const W = this.mW;
    const bm = off + (1 << cls);
    cv.fill(0, bm, bm + 3 * W + 1);
    let shared = 0;
    for (let c = off; c < off + len; c++) {
      const v = cv[c];
      const s = v >>> 3;
      const bit = 1 << (s & 31);
      const w = bm + (s >>> 5);
      if (((cv[w] | cv[w + W] | cv[w + 2 * W]) & bit) !== 0) shared = 1;
      if (v & 1) cv[w] |= bit;
      if (v & 2) cv[w + W] |= bit;
      if (v & 4) cv[w + 2 * W] |= bit;
    }
    cv[bm + 3 * W] = shared;
  }

  /** Stream s's bits in the bitmaps of a class >= BM_CLS vector: the union of its claims' tiers. */
  private refreshBits(off: number, cls: number, len: number, s: number): void {
    const cv = this.cv;
    let t = 0;
    for (let c = off; c < off + len; c++) if (cv[c] >>> 3 === s) t |= cv[c];
    const W = this.mW;
    const w = off + (1 << cls) + (s >>> 5);
    const bit = 1 << (s & 31);
    cv[w] = t & 1 ? cv[w] | bit : cv[w] & ~bit;
    cv[w + W] = t & 2 ? cv[w + W] | bit : cv[w + W] & ~bit;
    cv[w + 2 * W] = t & 4 ? cv[w + 2 * W] | bit : cv[w + 2 * W] & ~bit;
  }

  /** The bitmap width changed (more streams): every vector moves to a fresh, compact arena. */
  private relayoutClaims(w: number): void {
    const old = this.cv;
    this.mW = w;
    this.bmCls = w > BM_MAX_W ? 32 : BM_CLS;
    this.cv = new Int32Array(Math.max(1024, this.cvUsed + 64));
    this.cvUsed = 0;
    this.cvFree.length = 0;
    for (let x = 0; x < this.bUsed; x++) {
      const b = this.bp[x >>> this.pb];
      const o = (x & this.pm) * BS;
      const lc = b[o + LC];
      const cls = lc & 31;
      if (lc === 0 || cls === 0) continue;
      const len = lc >>> 5;
      const off = this.cvAlloc(cls);
      this.cv.set(old.subarray(b[o + VEC], b[o + VEC] + len), off);
      b[o + VEC] = off;
      if (cls >= this.bmCls) this.buildBitmaps(off, cls, len);
    }
  }

  /** Add one claim value to block x. */
  private vecPush(x: number, val: number): void {
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    const lc = b[o + LC];
    const len = lc >>> 5;
    let cls = lc & 31;
    if (cls === 0) {
      if (len === 0) {
        b[o + VEC] = val;
        b[o + LC] = 1 << 5;
        return;
      }
      const off = this.cvAlloc(1);
      this.cv[off] = b[o + VEC];
      this.cv[off + 1] = val;
      b[o + VEC] = off;
      b[o + LC] = (2 << 5) | 1;
      return;
    }
    let off = b[o + VEC];
    if (len === 1 << cls) {
      const n = this.cvAlloc(cls + 1);
      this.cv.copyWithin(n, off, off + len);
      this.cvRelease(off, cls);
      off = n;
      cls++;
      b[o + VEC] = off;
      this.cv[off + len] = val;
      b[o + LC] = ((len + 1) << 5) | cls;
      if (cls >= this.bmCls) this.buildBitmaps(off, cls, len + 1);
      return;
    }
    const cv = this.cv;
    cv[off + len] = val;
    b[o + LC] = ((len + 1) << 5) | cls;
    if (cls >= this.bmCls) {
      const s = val >>> 3;
      const W = this.mW;
      const w = off + (1 << cls) + (s >>> 5);
      const bit = 1 << (s & 31);
      if (((cv[w] | cv[w + W] | cv[w + 2 * W]) & bit) !== 0) cv[off + (1 << cls) + 3 * W] = 1;
      if (val & 1) cv[w] |= bit;
      if (val & 2) cv[w + W] |= bit;
      if (val & 4) cv[w + 2 * W] |= bit;
    }
  }

  /** Remove one claim value from block x; frees the block when no claim is left. */
  private vecRemove(x: number, val: number): void {
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    const lc = b[o + LC];
    const len = lc >>> 5;
    const cls = lc & 31;
    if (cls === 0) {
      this.freeBlock(x);
      return;
    }
    const cv = this.cv;
    const off = b[o + VEC];
    if (cls >= this.bmCls && len > 2 && cv[off + (1 << cls) + 3 * this.mW] === 0) {
      // no stream has two claims here: find the value, and the stream's bits just go
      const last = off + len - 1;
      let at = off;
      while (at < last && cv[at] !== val) at++;
      cv[at] = cv[last];
      b[o + LC] = ((len - 1) << 5) | cls;
      const s = val >>> 3;
      const W = this.mW;
      const w = off + (1 << cls) + (s >>> 5);
      const bit = ~(1 << (s & 31));
      cv[w] &= bit;
      cv[w + W] &= bit;
      cv[w + 2 * W] &= bit;
      return;
    }
    if (cls >= this.bmCls && len > 2) {
      // one pass: find the value, and the union of the stream's other claims for its bits
      const s = val >>> 3;
      let at = -1;
      let t = 0;
      for (let c = off; c < off + len; c++) {
        const v = cv[c];
        if (v >>> 3 !== s) continue;
        if (at === -1 && v === val) at = c;
        else t |= v;
      }
      if (at === -1) at = off + len - 1;
      cv[at] = cv[off + len - 1];
      b[o + LC] = ((len - 1) << 5) | cls;
      const W = this.mW;
      const w = off + (1 << cls) + (s >>> 5);
      const bit = 1 << (s & 31);
      cv[w] = t & 1 ? cv[w] | bit : cv[w] & ~bit;
      cv[w + W] = t & 2 ? cv[w + W] | bit : cv[w + W] & ~bit;
      cv[w + 2 * W] = t & 4 ? cv[w + 2 * W] | bit : cv[w + 2 * W] & ~bit;
      return;
    }
    let i = 0;
    while (i < len - 1 && cv[off + i] !== val) i++;
    cv[off + i] = cv[off + len - 1];
    if (len - 1 === 1) {
      // back to one inline value
      b[o + VEC] = cv[off];
      b[o + LC] = 1 << 5;
      this.cvRelease(off, cls);
    } else {
      // (vectors that carry bitmaps took one of the branches above: here len - 1 >= 2)
      b[o + LC] = ((len - 1) << 5) | cls;
    }
  }

  /** Replace one claim value of block x (tier change of one entry). */
  private vecReplace(x: number, oldVal: number, newVal: number): void {
    const b = this.bp[x >>> this.pb];
    const o = (x & this.pm) * BS;
    const lc = b[o + LC];
    if ((lc & 31) === 0) {
      b[o + VEC] = newVal;
      return;
    }
    const cv = this.cv;
    const off = b[o + VEC];
    const len = lc >>> 5;
    const end = off + len - 1;
    let i = off;
    while (i < end && cv[i] !== oldVal) i++;
    cv[i] = newVal;
    if ((lc & 31) >= this.bmCls) this.refreshBits(off, lc & 31, len, newVal >>> 3);
  }

  private claim(ent: number, x: number): void {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    const m = e[o + META];
    e[o + BLOCK] = x;
    this.vecPush(x, ((m >>> S_SHIFT) << 3) | (m & 7));
  }

  private unclaim(ent: number): void {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    const x = e[o + BLOCK];
    if (x < 0) return;
    const m = e[o + META];
    e[o + BLOCK] = -1;
    this.vecRemove(x, ((m >>> S_SHIFT) << 3) | (m & 7));
  }

  /** Set an entry's tier bits, keeping its block claim in step. */
  private setTiers(ent: number, tiers: number): void {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    const m = e[o + META];
    if ((m & 7) === tiers) return;
    e[o + META] = (m & ~7) | tiers;
    const x = e[o + BLOCK];
    if (x >= 0 && tiers !== 0) {
      const sv = (m >>> S_SHIFT) << 3;
      this.vecReplace(x, sv | (m & 7), sv | tiers);
    }
  }

  // ---------------------------------------------------------------- LRU lists

  private linkHead(ent: number, s: number): void {
    const ep = this.ep;
    const pb = this.pb;
    const pm = this.pm;
    const e = ep[ent >>> pb];
    const o = (ent & pm) * ES;
    const sh = this.sHead[s];
    e[o + SPREV] = -1;
    e[o + SNEXT] = sh;
    if (sh !== -1) ep[sh >>> pb][(sh & pm) * ES + SPREV] = ent;
    else this.sTail[s] = ent;
    this.sHead[s] = ent;
    this.stamp(e, o);
    if (sh === -1 && this.heapOn && this.inHeap[s] === 0) this.heapPush(s, this.stampOf(ent));
  }

  private stamp(e: Int32Array, o: number): void {
    const c = this.clock++;
    e[o + THI] = (c / TWO_32) | 0;
    e[o + TLO] = c | 0;
  }

  private stampOf(ent: number): number {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    return e[o + THI] * TWO_32 + (e[o + TLO] >>> 0);
  }

  private unlink(ent: number, s: number): void {
    const ep = this.ep;
    const pb = this.pb;
    const pm = this.pm;
    const e = ep[ent >>> pb];
    const o = (ent & pm) * ES;
    const sp = e[o + SPREV];
    const sn = e[o + SNEXT];
    if (sp !== -1) ep[sp >>> pb][(sp & pm) * ES + SNEXT] = sn;
    else this.sHead[s] = sn;
    if (sn !== -1) ep[sn >>> pb][(sn & pm) * ES + SPREV] = sp;
    else this.sTail[s] = sp;
  }

  private touch(ent: number, s: number): void {
    if (this.sHead[s] === ent) {
      this.stamp(this.ep[ent >>> this.pb], (ent & this.pm) * ES);
      return;
    }
    this.unlink(ent, s);
    this.linkHead(ent, s);
  }

  // ---------------------------------------------------------------- global eviction heap

  /** The globally least recently touched entry (the index holds at least one). */
  private globalLru(): number {
    if (!this.heapOn) {
      this.heapOn = true;
      for (let s = 0; s < this.streams.length; s++)
        if (this.sCount[s] > 0 && this.inHeap[s] === 0) this.heapPush(s, this.stampOf(this.sTail[s]));
    }
    for (;;) {
      const s = this.hStream[0];
      if (this.sCount[s] === 0) {
        // emptied since: out of the heap until it holds an entry again (linkHead)
        this.inHeap[s] = 0;
        this.hLen--;
        this.hStream[0] = this.hStream[this.hLen];
        this.hKey[0] = this.hKey[this.hLen];
        this.siftDown();
        continue;
      }
      const tail = this.sTail[s];
      const k = this.stampOf(tail);
      if (k === this.hKey[0]) return tail;
      this.hKey[0] = k;
      this.siftDown();
    }
  }

  private heapPush(s: number, key: number): void {
    if (this.hLen === this.hStream.length) {
      const hs = new Int32Array(this.hLen * 2);
      hs.set(this.hStream);
      this.hStream = hs;
      const hk = new Float64Array(this.hLen * 2);
      hk.set(this.hKey);
      this.hKey = hk;
    }
    this.inHeap[s] = 1;
    let i = this.hLen++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.hKey[p] <= key) break;
      this.hStream[i] = this.hStream[p];
      this.hKey[i] = this.hKey[p];
      i = p;
    }
    this.hStream[i] = s;
    this.hKey[i] = key;
  }

  /** Restore the heap order below the top after its key grew (or it was replaced). */
  private siftDown(): void {
    const n = this.hLen;
    const hs = this.hStream;
    const hk = this.hKey;
    const s = hs[0];
    const key = hk[0];
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && hk[c + 1] < hk[c]) c++;
      if (hk[c] >= key) break;
      hs[i] = hs[c];
      hk[i] = hk[c];
      i = c;
    }
    hs[i] = s;
    hk[i] = key;
  }

  private freeEntry(ent: number): void {
    const e = this.ep[ent >>> this.pb];
    const o = (ent & this.pm) * ES;
    const s = e[o + META] >>> S_SHIFT;
    this.deleteSlot(ent);
    this.unlink(ent, s);
    this.unclaim(ent);
    if (((e[o + META] >>> 3) & 3) === KIND_STR) this.strHashes.delete(ent);
    e[o + META] = 0;
    e[o + BLOCK] = this.eFree;
    this.eFree = ent;
    this.count--;
    this.sCount[s]--;
  }

  private evictFor(s: number): void {
    if (this.sCount[s] >= this.maxPerStream) {
      this.freeEntry(this.sTail[s]);
      this.counters.evictionsStream++;
      this.onEvict?.(this.streams[s]!.ref.streamId, "stream");
    }
    if (this.count >= this.maxEntries) {
      const v = this.globalLru();
      const vs = this.ep[v >>> this.pb][(v & this.pm) * ES + META] >>> S_SHIFT;
      this.freeEntry(v);
      this.counters.evictionsGlobal++;
      this.onEvict?.(this.streams[vs]!.ref.streamId, "global");
    }
  }

  // ---------------------------------------------------------------- apply

  applyBatch(stream: StreamRef, batch: EventBatch): void {
    const s = this.streamOf(stream);
    const events = batch?.events;
    if (s === -1) {
      // more than MAX_STREAMS live streams: the batch cannot be recorded
      this.counters.invalidEvents++;
      return;
    }
    if (!Array.isArray(events)) {
      this.counters.invalidEvents++;
      return;
    }
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      try {
        if (ev === null || typeof ev !== "object") this.counters.invalidEvents++;
        else if (ev.type === "BlockStored") this.store(s, ev);
        else if (ev.type === "BlockRemoved") this.remove(s, ev);
        else if (ev.type === "AllBlocksCleared") this.clearStream(s);
        else this.counters.ignoredEvents++;
      } catch {
        // defensive: malformed content must never throw out of the index
        this.counters.invalidEvents++;
      }
    }
  }

  private store(s: number, ev: BlockStored): void {
    if (isOtherGroup(ev)) {
      this.counters.ignoredEvents++;
      return;
    }
    const hashes = ev.blockHashes;
    if (!Array.isArray(hashes)) {
      this.counters.invalidEvents++;
      return;
    }
    const info = this.streams[s]!;
    const bit = tierBit(ev.medium);
    const bs = ev.blockSize;
    const keyable = keyableBlocks(ev);
    const lora = loraOf(ev);
    let ns: number;
    if (info.lastBs === bs && info.lastLora === lora) ns = info.lastNs;
    else {
      ns = this.nsIdOf(info.ref.model, lora, bs);
      info.lastBs = bs;
      info.lastLora = lora;
      info.lastNs = ns;
    }
    const seedHi = this.nsSeeds[ns * 2];
    const seedLo = this.nsSeeds[ns * 2 + 1];
    const ep = this.ep;
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    let prevOk = true;
    let prevHi = 0;
    let prevLo = 0;
    const parent = ev.parentBlockHash;
    if (parent === null || parent === undefined) {
      const salt = saltOf(ev);
      if (salt !== null) {
        // the salt starts the chain in place of the root (rules.ts saltOf)
        stringHash64(salt, this.k2, 0);
        prevHi = this.k2[0];
        prevLo = this.k2[1];
      }
    } else {
      prevOk = false;
      if (typeof parent === "string") {
        const kind = this.parseHash(parent);
        let pe = this.findEntry(s, kind, parent);
        if (this.aliases.size !== 0) {
          const ae = this.latestAlias(s, parent);
          if (ae !== -1) pe = ae;
        }
        if (pe === -1) this.counters.orphanStores++;
        else {
          const px = ep[pe >>> pb][(pe & pm) * ES + BLOCK];
          if (px !== -1) {
            const b = bp[px >>> pb];
            const o = (px & pm) * BS;
            prevOk = true;
            prevHi = b[o + KHI];
            prevLo = b[o + KLO];
          }
        }
      } else this.counters.orphanStores++;
    }
    const tokens = ev.tokenIds;
    const k2 = this.k2;
    // Read-ahead: hash the event's chain and touch the table slots of every block first. These
    // loads do not depend on each other, so the CPU overlaps their cache misses; the apply loop
    // below then mostly hits the cache.
    let pre = 0;
    const n = hashes.length;
    if (n > 1) {
      let keys = this.sKeys;
      if (keys.length < n * 2) {
        keys = new Int32Array(n * 2 + 64);
        this.sKeys = keys;
      }
      if (prevOk) {
        let ph = prevHi;
        let pl = prevLo;
        while (pre < keyable && typeof hashes[pre] === "string") {
          chainHash(seedHi, seedLo, ph, pl, tokens, pre * bs, bs, keys, pre * 2);
          ph = keys[pre * 2];
          pl = keys[pre * 2 + 1];
          pre++;
        }
      }
      this.touchSlots(s, hashes, keys, pre);
    }
    const keys = this.sKeys;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i];
      if (typeof h !== "string") {
        this.counters.invalidEvents++;
        prevOk = false;
        continue;
      }
      const have = prevOk && i < keyable;
      if (have) {
        if (i < pre && (i === 0 ? true : keys[i * 2 - 2] === prevHi && keys[i * 2 - 1] === prevLo)) {
          k2[0] = keys[i * 2];
          k2[1] = keys[i * 2 + 1];
        } else chainHash(seedHi, seedLo, prevHi, prevLo, tokens, i * bs, bs, k2, 0);
      }
      let kind: number;
      if (n > 1) {
        kind = this.pHash[i * 3 + 2];
        this.h2[0] = this.pHash[i * 3];
        this.h2[1] = this.pHash[i * 3 + 1];
      } else kind = this.parseHash(h);
      let ent = this.findEntry(s, kind, h);
      if (ent !== -1 && have) {
        const x = ep[ent >>> pb][(ent & pm) * ES + BLOCK];
        if (
          x !== -1 &&
          (bp[x >>> pb][(x & pm) * BS + KHI] !== k2[0] || bp[x >>> pb][(x & pm) * BS + KLO] !== k2[1])
        ) {
          // the same content-only hash at another position: its alias there (rules.ts)
          this.storeAlias(s, h, bit);
          prevHi = k2[0];
          prevLo = k2[1];
          continue;
        }
      }
      if (ent !== -1) {
        const e = ep[ent >>> pb];
        const o = (ent & pm) * ES;
        const m = e[o + META];
        if ((m & bit) === 0) this.setTiers(ent, (m & 7) | bit);
        else if (this.countCopies) {
          // another physical copy of a hash the stream already holds on this tier
          const sh = 5 + 3 * (bit >>> 1);
          if (((m >>> sh) & 7) < MAX_EXTRA) e[o + META] = m + (1 << sh);
          this.counters.duplicateStores++;
        }
        // an entry kept for removal only gets its key (a differing key took the alias path)
        if (have && e[o + BLOCK] === -1) this.claim(ent, this.blockOf(k2[0], k2[1]));
        this.touch(ent, s);
      } else {
        this.evictFor(s);
        ent = this.newEntry(s, kind, h, bit);
        if (have) {
          this.claim(ent, this.blockOf(k2[0], k2[1]));
        }
      }
      if (have) {
        // the entry's block is the one keyed k2 (checked, or just claimed)
        prevHi = k2[0];
        prevLo = k2[1];
        continue;
      }
      const x = ep[ent >>> pb][(ent & pm) * ES + BLOCK];
      if (x !== -1) {
        const b = bp[x >>> pb];
        const o = (x & pm) * BS;
        prevOk = true;
        prevHi = b[o + KHI];
        prevLo = b[o + KLO];
      } else prevOk = false;
    }
  }

  /** Entry of the latest alias of `h` in stream s (rules.ts), or -1. Clobbers h2. */
  private latestAlias(s: number, h: HashKey): number {
    const n = this.aliases.get(s)?.get(h) ?? 0;
    for (let j = n; j >= 1; j--) {
      const a = aliasKey(h, j);
      const ae = this.findEntry(s, this.parseHash(a), a);
      if (ae !== -1) return ae;
    }
    return -1;
  }

  /**
   * Store the block keyed k2 under an alias of `h` (h already names a block at another
   * position): the alias with that key if there is one, else a new one. Clobbers h2.
   */
  private storeAlias(s: number, h: HashKey, bit: number): void {
    const k2 = this.k2;
    const ep = this.ep;
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    let per = this.aliases.get(s);
    if (per === undefined) {
      per = new Map();
      this.aliases.set(s, per);
    }
    const n = per.get(h) ?? 0;
    for (let j = n; j >= 1; j--) {
      const a = aliasKey(h, j);
      const ae = this.findEntry(s, this.parseHash(a), a);
      if (ae === -1) continue;
      const x = ep[ae >>> pb][(ae & pm) * ES + BLOCK];
      if (
        x === -1 ||
        bp[x >>> pb][(x & pm) * BS + KHI] !== k2[0] ||
        bp[x >>> pb][(x & pm) * BS + KLO] !== k2[1]
      ) {
        continue;
      }
      const e = ep[ae >>> pb];
      const o = (ae & pm) * ES;
      const m = e[o + META];
      if ((m & bit) === 0) this.setTiers(ae, (m & 7) | bit);
      else if (this.countCopies) {
        const sh = 5 + 3 * (bit >>> 1);
        if (((m >>> sh) & 7) < MAX_EXTRA) e[o + META] = m + (1 << sh);
        this.counters.duplicateStores++;
      }
      this.touch(ae, s);
      return;
    }
    if (n >= MAX_ALIASES) return;
    per.set(h, n + 1);
    const a = aliasKey(h, n + 1);
    this.evictFor(s);
    const kind = this.parseHash(a);
    // the miss leaves insertSlot its slot (it inserts where the last lookup ended)
    if (this.findEntry(s, kind, a) !== -1) return;
    const ent = this.newEntry(s, kind, a, bit);
    this.claim(ent, this.blockOf(k2[0], k2[1]));
  }

  /**
   * A removal of `h` on tier `bit` that an alias takes (the latest holding that tier), done
   * here; false when none does (the hash's own entry is next). Clobbers h2.
   */
  private removeAlias(s: number, h: HashKey, bit: number): boolean {
    const per = this.aliases.get(s);
    let n = per?.get(h) ?? 0;
    if (per === undefined || n === 0) return false;
    // forget aliases evicted meanwhile
    while (n > 0) {
      const a = aliasKey(h, n);
      if (this.findEntry(s, this.parseHash(a), a) !== -1) break;
      n--;
    }
    if (n === 0) per.delete(h);
    else per.set(h, n);
    for (let j = n; j >= 1; j--) {
      const a = aliasKey(h, j);
      const ae = this.findEntry(s, this.parseHash(a), a);
      if (ae === -1) continue;
      const e = this.ep[ae >>> this.pb];
      const o = (ae & this.pm) * ES;
      const m = e[o + META];
      if ((m & bit) === 0) continue;
      const sh = 5 + 3 * (bit >>> 1);
      if (((m >>> sh) & 7) !== 0) e[o + META] = m - (1 << sh);
      else {
        const left = m & 7 & ~bit;
        if (left === 0) this.freeEntry(ae);
        else this.setTiers(ae, left);
      }
      return true;
    }
    return false;
  }

  /**
   * Read-ahead of the entry slots (and the records they point to) of `hashes` and the block
   * slots and records of keys[0 .. nKeys). The parsed hashes are kept in pHash (hi, lo, kind per
   * hash) for the apply loop.
   */
  private touchSlots(s: number, hashes: HashKey[], keys: Int32Array, nKeys: number): void {
    let acc = 0;
    const et = this.eTabs;
    const ep = this.ep;
    const pb = this.pb;
    const pm = this.pm;
    let ph = this.pHash;
    if (ph.length < hashes.length * 3) {
      ph = new Int32Array(hashes.length * 3 + 192);
      this.pHash = ph;
    }
    const h2 = this.h2;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i];
      if (typeof h !== "string") continue;
      const kind = this.parseHash(h);
      const hi = h2[0];
      const lo = h2[1];
      ph[i * 3] = hi;
      ph[i * 3 + 1] = lo;
      ph[i * 3 + 2] = kind;
      const hh = mixHash(hi, lo, s);
      const es = et[hh >>> SHARD_SHIFT];
      const v = es[home(hh, es.length) | 0];
      if (v !== 0 && v !== TOMB && v >>> 27 === (hh & 31)) {
        // most likely this very entry (a re-store or a removal): its record too
        const x = (v & IDX) - 1;
        acc ^= ep[x >>> pb][(x & pm) * ES + META];
      } else acc ^= v;
    }
    const bt = this.bTabs;
    for (let i = 0; i < nKeys; i++) {
      const hh = mixHash(keys[i * 2], keys[i * 2 + 1], 0);
      const bsl = bt[hh >>> SHARD_SHIFT];
      acc ^= bsl[home(hh, bsl.length) | 0];
    }
    this.sink ^= acc;
  }

  private remove(s: number, ev: BlockRemoved): void {
    if (isOtherGroup(ev)) {
      this.counters.ignoredEvents++;
      return;
    }
    const hashes = ev.blockHashes;
    if (!Array.isArray(hashes)) {
      this.counters.invalidEvents++;
      return;
    }
    const bit = tierBit(ev.medium);
    if (hashes.length > 1) this.touchSlots(s, hashes, this.sKeys, 0);
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i];
      if (typeof h !== "string") {
        this.counters.unknownRemovals++;
        continue;
      }
      if (this.aliases.size !== 0 && this.removeAlias(s, h, bit)) continue;
      let kind: number;
      if (hashes.length > 1) {
        kind = this.pHash[i * 3 + 2];
        this.h2[0] = this.pHash[i * 3];
        this.h2[1] = this.pHash[i * 3 + 1];
      } else kind = this.parseHash(h);
      const ent = this.findEntry(s, kind, h);
      if (ent === -1) {
        this.counters.unknownRemovals++;
        continue;
      }
      const e = this.ep[ent >>> this.pb];
      const o = (ent & this.pm) * ES;
      const m = e[o + META];
      if ((m & bit) === 0) {
        this.counters.unknownRemovals++;
        continue;
      }
      const sh = 5 + 3 * (bit >>> 1);
      if (((m >>> sh) & 7) !== 0) {
        // one of several copies removed: the stream still holds the hash on this tier
        e[o + META] = m - (1 << sh);
        continue;
      }
      const left = m & 7 & ~bit;
      if (left === 0) this.freeEntry(ent);
      else this.setTiers(ent, left);
    }
  }

  private clearStream(s: number): void {
    this.aliases.delete(s);
    let x = this.sHead[s];
    while (x !== -1) {
      const nx = this.ep[x >>> this.pb][(x & this.pm) * ES + SNEXT];
      this.freeEntry(x);
      x = nx;
    }
  }

  dropStream(streamId: string): void {
    const s = this.streamIdx.get(streamId);
    if (s === undefined) return;
    this.clearStream(s);
    this.streamIdx.delete(streamId);
    this.streams[s] = null;
    this.freeStreams.push(s);
  }

  // ---------------------------------------------------------------- match

  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[] {
    const bs = ns.blockSize;
    if (!Number.isInteger(bs) || bs < 1 || tokenIds.length < bs) return [];
    const nsId = this.nsIds.get(namespaceKey(ns.model, ns.lora, bs));
    if (nsId === undefined) return [];
    const seedHi = this.nsSeeds[nsId * 2];
    const seedLo = this.nsSeeds[nsId * 2 + 1];
    const n = Math.floor(tokenIds.length / bs);
    const bp = this.bp;
    const pb = this.pb;
    const pm = this.pm;
    const cv = this.cv;
    // State as bitmaps over stream indexes, so a block held by many streams costs a few word
    // operations per 32 streams instead of a visit per (stream, block): alive[k * W + w] = the
    // streams whose leading run on tier k (0 GPU, 1 CPU, 2 STORAGE) is still going; any = the
    // streams whose leading run of blocks held on some tier is still going. A block's holders are gathered from its claims into blk (the same layout; several
    // entries of one stream on a block simply OR together). Bits that drop at block i record i
    // as that stream's run end. Only words with a live stream are visited (active list).
    const W = this.mW;
    const bmCls = this.bmCls;
    const any = this.mAny;
    const alive = this.mAlive;
    const blk = this.mBlk;
    const active = this.mActive;
    const ends = this.mEnd; // per stream: [any, GPU, CPU, STORAGE]
    const cands = this.mCands;
    let nActive = 0;
    let nc = 0;
    let stop = n; // blocks 0 .. stop-1 are held by every stream still alive at the end

    const keys = this.mKeys;
    const blks = this.mBlks;
    let prevHi = 0;
    let prevLo = 0;
    if (typeof ns.salt === "string") {
      // a salted request's chain starts from its salt (rules.ts saltOf)
      stringHash64(ns.salt, keys, 0);
      prevHi = keys[0];
      prevLo = keys[1];
    }
    let prevX = -1;
    let done = false;
    for (let base = 0; base < n && !done; base += CHUNK) {
      // hash and look up a chunk at a time: the lookups are independent memory accesses the
      // CPU overlaps, and a walk that ends early wastes at most one chunk
      const m = Math.min(CHUNK, n - base);
      for (let j = 0; j < m; j++) {
        chainHash(seedHi, seedLo, prevHi, prevLo, tokenIds, (base + j) * bs, bs, keys, j * 2);
        prevHi = keys[j * 2];
        prevLo = keys[j * 2 + 1];
      }
      // lookups, then a read of each found block's claims: independent loads that overlap.
      // A chain's blocks usually sit in adjacent records (see nextInChain): those skip the table.
      let acc = 0;
      for (let j = 0; j < m; j++) {
        const hi = keys[j * 2];
        const lo = keys[j * 2 + 1];
        let x = prevX === -1 ? -1 : this.nextInChain(prevX, hi, lo);
        if (x === -1) x = this.findBlock(hi, lo);
        blks[j] = x;
        prevX = x;
        if (x !== -1) {
          const b = bp[x >>> pb];
          const o = (x & pm) * BS;
          if ((b[o + LC] & 31) !== 0) acc ^= cv[b[o + VEC]];
        }
      }
      this.sink ^= acc;
      for (let j = 0; j < m; j++) {
        const x = blks[j];
        const i = base + j;
        if (x === -1) {
          stop = i;
          done = true;
          break;
        }
        const b = bp[x >>> pb];
        const o = (x & pm) * BS;
        const lc = b[o + LC];
        const inline = (lc & 31) === 0;
        const arr = inline ? b : cv;
        const off = inline ? o + VEC : b[o + VEC];
        const end = off + (lc >>> 5);
        const cls = lc & 31;
        if (i === 0) {
          // every word: the first block decides the candidates
          if (cls >= bmCls) blk.set(cv.subarray(off + (1 << cls), off + (1 << cls) + 3 * W));
          else blk.fill(0);
          for (let c = cls >= bmCls ? end : off; c < end; c++) {
            const v = arr[c];
            const s = v >>> 3;
            const w = s >>> 5;
            const bit = 1 << (s & 31);
            if (v & 1) blk[w] |= bit;
            if (v & 2) blk[W + w] |= bit;
            if (v & 4) blk[2 * W + w] |= bit;
          }
          for (let w = 0; w < W; w++) {
            const a = blk[w] | blk[W + w] | blk[2 * W + w];
            any[w] = a;
            alive[w] = blk[w];
            alive[W + w] = blk[W + w];
            alive[2 * W + w] = blk[2 * W + w];
            if (a === 0) continue;
            active[nActive++] = w;
            let d = a;
            while (d !== 0) {
              const low = d & -d;
              const s = (w << 5) | (31 - Math.clz32(low));
              cands[nc++] = s;
              ends[s * 4] = 0;
              ends[s * 4 + 1] = 0;
              ends[s * 4 + 2] = 0;
              ends[s * 4 + 3] = 0;
              d ^= low;
            }
          }
          if (nActive === 0) {
            done = true;
            break;
          }
          continue;
        }
        if (cls >= bmCls) {
          // the holders' bitmaps kept with the claims: a few words instead of a claim per stream
          const bm = off + (1 << cls);
          for (let k = 0; k < nActive; k++) {
            const w = active[k];
            blk[w] = cv[bm + w];
            blk[W + w] = cv[bm + W + w];
            blk[2 * W + w] = cv[bm + 2 * W + w];
          }
        } else {
          for (let k = 0; k < nActive; k++) {
            const w = active[k];
            blk[w] = 0;
            blk[W + w] = 0;
            blk[2 * W + w] = 0;
          }
        }
        // words of streams no longer alive get garbage here; they are never read
        for (let c = cls >= bmCls ? end : off; c < end; c++) {
          const v = arr[c];
          const s = v >>> 3;
          const w = s >>> 5;
          const bit = 1 << (s & 31);
          if (v & 1) blk[w] |= bit;
          if (v & 2) blk[W + w] |= bit;
          if (v & 4) blk[2 * W + w] |= bit;
        }
        let kept = 0;
        for (let k = 0; k < nActive; k++) {
          const w = active[k];
          const g = blk[w];
          const cp = blk[W + w];
          const st = blk[2 * W + w];
          const a = any[w];
          const na = a & (g | cp | st);
          if (na !== a) {
            let d = a & ~na;
            while (d !== 0) {
              const low = d & -d;
              ends[((w << 5) | (31 - Math.clz32(low))) * 4] = i;
              d ^= low;
            }
            any[w] = na;
          }
          const ag = alive[w];
          if ((ag & ~g) !== 0) {
            let d = ag & ~g;
            while (d !== 0) {
              const low = d & -d;
              ends[((w << 5) | (31 - Math.clz32(low))) * 4 + 1] = i;
              d ^= low;
            }
            alive[w] = ag & g;
          }
          const ac = alive[W + w];
          if ((ac & ~cp) !== 0) {
            let d = ac & ~cp;
            while (d !== 0) {
              const low = d & -d;
              ends[((w << 5) | (31 - Math.clz32(low))) * 4 + 2] = i;
              d ^= low;
            }
            alive[W + w] = ac & cp;
          }
          const as = alive[2 * W + w];
          if ((as & ~st) !== 0) {
            let d = as & ~st;
            while (d !== 0) {
              const low = d & -d;
              ends[((w << 5) | (31 - Math.clz32(low))) * 4 + 3] = i;
              d ^= low;
            }
            alive[2 * W + w] = as & st;
          }
          if (na !== 0) active[kept++] = w;
        }
        nActive = kept;
        if (nActive === 0) {
          done = true;
          break;
        }
      }
    }
    // output order (most blocks first, then streamId): a numeric sort of (n - matched, rank)
    if (this.ranksDirty) this.rankStreams();
    const order = this.mOrder;
    const rankOf = this.rankOf;
    for (let k = 0; k < nc; k++) {
      const s = cands[k];
      const matched = (any[s >>> 5] & (1 << (s & 31))) !== 0 ? stop : ends[s * 4];
      order[k] = (n - matched) * RANK_SPAN + rankOf[s];
    }
    if (nc > 1) order.subarray(0, nc).sort();
    const out: StreamMatch[] = new Array(nc);
    for (let k = 0; k < nc; k++) {
      const key = order[k];
      const s = this.byRank[key % RANK_SPAN];
      const matched = n - Math.floor(key / RANK_SPAN);
      const ref = this.streams[s]!.ref;
      const w = s >>> 5;
      const bit = 1 << (s & 31);
      const e4 = s * 4;
      out[k] = {
        streamId: ref.streamId,
        pod: ref.pod,
        rank: ref.rank,
        matchedBlocks: matched,
        tiers: {
          GPU: (alive[w] & bit) !== 0 ? stop : ends[e4 + 1],
          CPU: (alive[W + w] & bit) !== 0 ? stop : ends[e4 + 2],
          STORAGE: (alive[2 * W + w] & bit) !== 0 ? stop : ends[e4 + 3],
        },
      };
    }
    return out;
  }

  /** rankOf[s] / byRank: the live streams ordered by streamId (UTF-16 code units, as sortMatches). */
  private rankStreams(): void {
    const live: number[] = [...this.streamIdx.values()];
    const streams = this.streams;
    live.sort((a, b) => (streams[a]!.ref.streamId < streams[b]!.ref.streamId ? -1 : 1));
    for (let r = 0; r < live.length; r++) {
      this.rankOf[live[r]] = r;
      this.byRank[r] = live[r];
    }
    this.ranksDirty = false;
  }

  // ---------------------------------------------------------------- introspection

  streamBlocks(streamId: string): BlockClaim[] {
    const s = this.streamIdx.get(streamId);
    if (s === undefined) return [];
    const out: BlockClaim[] = [];
    const ep = this.ep;
    for (let x = this.sHead[s]; x !== -1; x = ep[x >>> this.pb][(x & this.pm) * ES + SNEXT]) {
      const hash = this.hashKeyOf(x);
      if (isAliasKey(hash)) continue;
      out.push({
        hash,
        tiers: tiersFromBits(ep[x >>> this.pb][(x & this.pm) * ES + META] & 7),
      });
    }
    return out;
  }

  streamTierCounts(streamId: string, out: TierCounts): TierCounts {
    out.GPU = 0;
    out.CPU = 0;
    out.STORAGE = 0;
    const s = this.streamIdx.get(streamId);
    if (s === undefined) return out;
    const ep = this.ep;
    for (let x = this.sHead[s]; x !== -1; ) {
      const o = (x & this.pm) * ES;
      const page = ep[x >>> this.pb];
      const m = page[o + META];
      if (m & 1) out.GPU++;
      if (m & 2) out.CPU++;
      if (m & 4) out.STORAGE++;
      x = page[o + SNEXT];
    }
    return out;
  }

  /**
   * A stream's entries as a peer replica's catch-up loads them (importStream): oldest touched
   * first, each with its tiers, extra copies and own chain key. O(the stream's entries).
   */
  exportStream(streamId: string): StreamExport | null {
    const s = this.streamIdx.get(streamId);
    if (s === undefined) return null;
    const n = this.sCount[s];
    const model = this.streams[s]!.ref.model;
    const namespaces = this.nsRefs
      .filter((r) => r.model === model)
      .map((r): [string | null, number] => [r.lora, r.blockSize]);
    const out: StreamExport = {
      namespaces,
      hashes: new Array(n),
      meta: new Array(n),
      keys: new Array(n * 2),
    };
    const ep = this.ep;
    let i = n;
    for (let x = this.sHead[s]; x !== -1 && i > 0; x = ep[x >>> this.pb][(x & this.pm) * ES + SNEXT]) {
      i--;
      const e = ep[x >>> this.pb];
      const o = (x & this.pm) * ES;
      const m = e[o + META];
      const b = e[o + BLOCK];
      out.hashes[i] = this.hashKeyOf(x);
      out.meta[i] = (m & 7) | (((m >>> 5) & 0x1ff) << 3) | (b === -1 ? 0 : EXPORT_KEYED);
      out.keys[i * 2] = b === -1 ? 0 : this.bp[b >>> this.pb][(b & this.pm) * BS + KHI];
      out.keys[i * 2 + 1] = b === -1 ? 0 : this.bp[b >>> this.pb][(b & this.pm) * BS + KLO];
    }
    return out;
  }

  /**
   * Replace a stream's entries with an exported set (a peer's snapshot). Malformed entries
   * (no tier, a non-string hash, a hash twice) are skipped and counted as invalid events; the
   * caps apply as for stores. Returns the entries loaded.
   */
  importStream(ref: StreamRef, data: StreamExport): number {
    const s = this.streamOf(ref);
    if (s === -1) {
      this.counters.invalidEvents++;
      return 0;
    }
    this.clearStream(s);
    // the keys encode their namespace; match looks namespaces up by name, so they must be known
    for (const ns of data.namespaces ?? []) {
      if (
        Array.isArray(ns) &&
        (ns[0] === null || typeof ns[0] === "string") &&
        Number.isInteger(ns[1]) &&
        ns[1] > 0
      )
        this.nsIdOf(ref.model, ns[0], ns[1]);
    }
    const { hashes, meta, keys } = data;
    let loaded = 0;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i];
      const m = meta[i];
      const tiers = m & 7;
      if (typeof h !== "string" || h === "" || !Number.isInteger(m) || tiers === 0) {
        this.counters.invalidEvents++;
        continue;
      }
      const kind = this.parseHash(h);
      if (this.findEntry(s, kind, h) !== -1) {
        this.counters.invalidEvents++;
        continue;
      }
      this.evictFor(s);
      const ent = this.newEntry(s, kind, h, (((m >>> 3) & 0x1ff) << 5) | tiers);
      if ((m & EXPORT_KEYED) !== 0) this.claim(ent, this.blockOf(keys[i * 2] | 0, keys[i * 2 + 1] | 0));
      loaded++;
    }
    return loaded;
  }

  streamEntryCount(streamId: string): number {
    const s = this.streamIdx.get(streamId);
    return s === undefined ? 0 : this.sCount[s];
  }

  stats(): IndexStats {
    const c = this.counters;
    let pages = 0;
    for (const p of this.ep) pages += p.byteLength;
    for (const p of this.bp) pages += p.byteLength;
    for (const t of this.eTabs) pages += t.byteLength;
    for (const t of this.bTabs) pages += t.byteLength;
    const approxBytes = pages + this.cv.byteLength + this.strHashes.size * 96 + this.streamIdx.size * 200;
    return {
      entries: this.count,
      blocks: this.blockCount,
      streams: this.streamIdx.size,
      approxBytes,
      evictions: c.evictionsGlobal + c.evictionsStream,
      ...c,
    };
  }
}
