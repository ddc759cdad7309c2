/**
 * Bounded LRU of encoded text segments (segment text → token ids).
 *
 * Segments are pieces of a prompt cut right before an added special token (e.g. `<|im_start|>`).
 * HF tokenizers split added tokens out of the raw text before normalisation, pre-tokenisation
 * and BPE, so each piece between added tokens is encoded independently: encode(A + B) equals
 * encode(A) ++ encode(B) whenever B starts with an added token that no other added token can
 * overlap across the cut (checked by `segmentationPlan`). Requests sharing a conversation
 * prefix therefore reuse the ids of every shared turn.
 */
export interface SegmentCacheOptions {
  /** max cached segments (default 4096) */
  maxEntries?: number;
  /** max total cached token ids (default 2,000,000 ≈ 8 MB of ids) */
  maxTokens?: number;
  /** max total chars of cached segment texts (the keys; default 16,000,000) */
  maxChars?: number;
  /** segments longer than this are not cached (default 2,000,000 chars) */
  maxSegmentChars?: number;
}

export interface SegmentCacheStats {
  hits: number;
  misses: number;
  entries: number;
  tokens: number;
  chars: number;
  evictions: number;
}

export class SegmentCache {
  private readonly map = new Map<string, Uint32Array>();
  private readonly maxEntries: number;
  private readonly maxTokens: number;
  private readonly maxChars: number;
  readonly maxSegmentChars: number;
  private tokens = 0;
  private chars = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(opts: SegmentCacheOptions = {}) {
    this.maxEntries = Math.max(1, opts.maxEntries ?? 4096);
    this.maxTokens = Math.max(1, opts.maxTokens ?? 2_000_000);
    this.maxChars = Math.max(1, opts.maxChars ?? 16_000_000);
    this.maxSegmentChars = Math.min(this.maxChars, Math.max(1, opts.maxSegmentChars ?? 2_000_000));
  }

  get(segment: string): Uint32Array | undefined {
    const v = this.map.get(segment);
    if (v === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // refresh recency
    this.map.delete(segment);
    this.map.set(segment, v);
    return v;
  }

  set(segment: string, ids: ArrayLike<number>): void {
    if (segment.length > this.maxSegmentChars || ids.length > this.maxTokens) return;
    const prev = this.map.get(segment);
    if (prev !== undefined) {
      this.map.delete(segment);
      this.tokens -= prev.length;
      this.chars -= segment.length;
    }
    const arr = ids instanceof Uint32Array ? ids : Uint32Array.from(ids);
    this.map.set(segment, arr);
    this.tokens += arr.length;
    this.chars += segment.length;
    while (this.map.size > this.maxEntries || this.tokens > this.maxTokens || this.chars > this.maxChars) {
      const oldest = this.map.keys().next();
      if (oldest.done) break;
      const v = this.map.get(oldest.value)!;
      this.map.delete(oldest.value);
      this.tokens -= v.length;
      this.chars -= oldest.value.length;
      this.evictions++;
    }
  }

  clear(): void {
    this.map.clear();
    this.tokens = 0;
    this.chars = 0;
  }

  stats(): SegmentCacheStats {
    return {
      hits: this.hits,
      misses: this.misses,
      entries: this.map.size,
      tokens: this.tokens,
      chars: this.chars,
      evictions: this.evictions,
    };
  }
}
