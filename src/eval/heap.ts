/**
 * The simulator's event queue: a binary min-heap on (time, insertion order), so events at the
 * same time run in the order they were scheduled. Entries are four numbers in parallel arrays
 * (no object per event); `pop` leaves the popped entry in `t`, `kind`, `a`, `b`.
 */
export class EventHeap {
  private ts: number[] = [];
  private seqs: number[] = [];
  private kinds: number[] = [];
  private as: number[] = [];
  private bs: number[] = [];
  private seq = 0;
  t = 0;
  kind = 0;
  a = 0;
  b = 0;

  get size(): number {
    return this.ts.length;
  }

  private less(i: number, j: number): boolean {
    return this.ts[i] < this.ts[j] || (this.ts[i] === this.ts[j] && this.seqs[i] < this.seqs[j]);
  }

  private swap(i: number, j: number): void {
    for (const arr of [this.ts, this.seqs, this.kinds, this.as, this.bs]) {
      const x = arr[i];
      arr[i] = arr[j];
      arr[j] = x;
    }
  }

  push(t: number, kind: number, a: number, b: number): void {
    this.ts.push(t);
    this.seqs.push(this.seq++);
    this.kinds.push(kind);
    this.as.push(a);
    this.bs.push(b);
    let i = this.ts.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** Remove the earliest entry into t/kind/a/b; the heap must not be empty. */
  pop(): void {
    this.t = this.ts[0];
    this.kind = this.kinds[0];
    this.a = this.as[0];
    this.b = this.bs[0];
    const last = this.ts.length - 1;
    if (last > 0) this.swap(0, last);
    this.ts.pop();
    this.seqs.pop();
    this.kinds.pop();
    this.as.pop();
    this.bs.pop();
    const n = this.ts.length;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(l, m)) m = l;
      if (r < n && this.less(r, m)) m = r;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
  }
}
