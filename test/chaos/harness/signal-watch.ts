import { closeSync, openSync, readSync } from "node:fs";
import { type LogLine, matches, metricSum } from "./observe.ts";

/**
 * Watches the gateway's signals while a fault is on: new lines of its log (read from a byte
 * offset every `pollMs`) and the spec's metrics (scraped every `scrapeMs`). Every signal is
 * timed by when the harness saw it, on the harness's clock: a line's own `time` is the gateway's
 * clock, which the time-skew experiment moves. Detection = the first expected event or metric
 * change seen after the fault's start.
 */

export interface SeenEvent {
  line: LogLine;
  /** epoch ms (the harness's clock) when the line was read */
  seenAt: number;
}

export interface WatchOptions {
  file: string;
  /** byte offset of the log at the fault's start */
  from: number;
  events: string[];
  /** a line naming a pod must name one of these (empty: any) */
  pods: Set<string>;
  metrics: string[];
  /** the gateway's metrics text taken before the fault */
  metricsBefore: string;
  scrape: () => Promise<string>;
  pollMs?: number;
  scrapeMs?: number;
}

export class SignalWatch {
  readonly events = new Map<string, SeenEvent>();
  /** metric spec → epoch ms of the first scrape that showed it grown */
  readonly metrics = new Map<string, number>();
  private offset: number;
  private rest = Buffer.alloc(0);
  private timers: NodeJS.Timeout[] = [];
  private scraping = false;

  constructor(private readonly o: WatchOptions) {
    this.offset = o.from;
  }

  start(): this {
    this.timers.push(setInterval(() => this.poll(), this.o.pollMs ?? 100));
    if (this.o.metrics.length)
      this.timers.push(setInterval(() => void this.scrapeOnce(), this.o.scrapeMs ?? 500));
    return this;
  }

  /** Stop, after a last read of the log up to `to` (bytes) and a last scrape. */
  async stop(to?: number): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.poll(to);
    while (this.scraping) await new Promise((r) => setTimeout(r, 20));
    if (this.o.metrics.length) await this.scrapeOnce();
  }

  /** The earliest signal seen: when and which, or null. */
  first(): { at: number; signal: string } | null {
    let best: { at: number; signal: string } | null = null;
    for (const [m, e] of this.events)
      if (best === null || e.seenAt < best.at) best = { at: e.seenAt, signal: m };
    for (const [m, at] of this.metrics) if (best === null || at < best.at) best = { at, signal: m };
    return best;
  }

  /** Read the log's new whole lines (up to `to` bytes when given). */
  poll(to = Number.POSITIVE_INFINITY): void {
    const now = Date.now();
    for (const line of this.readNew(to)) {
      let l: LogLine;
      try {
        l = JSON.parse(line) as LogLine;
      } catch {
        continue;
      }
      for (const m of this.o.events)
        if (!this.events.has(m) && matches(l, m, this.o.pods)) this.events.set(m, { line: l, seenAt: now });
    }
  }

  private readNew(to: number): string[] {
    let fd: number;
    try {
      fd = openSync(this.o.file, "r");
    } catch {
      return [];
    }
    const chunks: Buffer[] = [this.rest];
    try {
      const buf = Buffer.alloc(1 << 16);
      for (;;) {
        const want = Math.min(buf.length, to - this.offset);
        if (want <= 0) break;
        const n = readSync(fd, buf, 0, want, this.offset);
        if (n <= 0) break;
        chunks.push(Buffer.from(buf.subarray(0, n)));
        this.offset += n;
      }
    } finally {
      closeSync(fd);
    }
    const all = Buffer.concat(chunks);
    const last = all.lastIndexOf(10);
    // a line still being written stays for the next read
    this.rest = last === -1 ? all : Buffer.from(all.subarray(last + 1));
    if (last === -1) return [];
    return all
      .toString("utf8", 0, last)
      .split("\n")
      .filter((x) => x.startsWith("{"));
  }

  private async scrapeOnce(): Promise<void> {
    if (this.scraping) return;
    this.scraping = true;
    try {
      const text = await this.o.scrape();
      const now = Date.now();
      for (const m of this.o.metrics)
        if (!this.metrics.has(m) && metricGrowth(this.o.metricsBefore, text, m) > 0) this.metrics.set(m, now);
    } catch {
      // a scrape that failed (the gateway busy or restarting) says nothing: the next one will
    } finally {
      this.scraping = false;
    }
  }
}

/** How much the metric `spec` (`name` or `name{label="v"}`) grew between two scrapes. */
export function metricGrowth(before: string, after: string, spec: string): number {
  const [name, filter] = spec.includes("{")
    ? [spec.slice(0, spec.indexOf("{")), spec.slice(spec.indexOf("{") + 1, -1)]
    : [spec, undefined];
  return metricSum(after, name, filter) - metricSum(before, name, filter);
}
