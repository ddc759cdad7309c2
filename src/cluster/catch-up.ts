/**
 * The starting replica's side of the catch-up: fetch a peer's snapshot before discovery starts,
 * keep its streams until their subscribers start, and load each one into the index then
 * (`resumeOf`, the subscriber manager's hook). Streams whose pod never shows up are forgotten
 * after `keepMs`, so the held snapshot is bounded in time as well as in size.
 */
import { performance } from "node:perf_hooks";
import type { ResumePoint } from "../events/resume.ts";
import type { PrefixIndex, StreamRef } from "../index/types.ts";
import type { Logger } from "../util/log.ts";
import type { ClusterLink } from "./link.ts";
import { fetchSnapshot, SNAPSHOT_DEFAULTS, type SnapshotOptions, type SnapshotStream } from "./snapshot.ts";

export class CatchUp {
  private readonly pending = new Map<string, SnapshotStream>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly index: PrefixIndex,
    private readonly link: ClusterLink,
    private readonly log: Logger,
    private readonly o: SnapshotOptions = SNAPSHOT_DEFAULTS,
  ) {}

  /**
   * Fetch a peer's snapshot: waits up to `connectMs` for NATS, then for the snapshot. Never
   * throws: without a peer (or NATS) the replica starts from the engines alone.
   */
  async run(connectMs: number): Promise<void> {
    const m = this.link.metrics;
    if (this.index.importStream === undefined) return;
    const t0 = performance.now();
    const nc = await this.link.connection(connectMs);
    if (nc === null) {
      m.catchUp.inc({ result: "no_nats" });
      this.log.warn(
        { event: "cluster.catchup_skipped", reason: "nats unreachable" },
        "no catch-up: NATS down",
      );
      return;
    }
    const r = await fetchSnapshot(nc, this.link, this.o);
    m.catchUpSeconds.observe((performance.now() - t0) / 1000);
    m.catchUp.inc({ result: r.result });
    if (r.result !== "loaded") {
      const level = r.result === "no_peer" ? "info" : "warn";
      this.log[level](
        { event: "cluster.catchup_skipped", reason: r.result, detail: r.detail },
        "no catch-up from a peer: streams start from their engines",
      );
      return;
    }
    for (const s of r.streams) this.pending.set(s.ref.streamId, s);
    this.log.info(
      {
        event: "cluster.catchup_fetched",
        peer: r.from,
        streams: r.streams.length,
        chunks: r.chunks,
        bytes: r.bytes,
        ms: Math.round(performance.now() - t0),
      },
      "index snapshot from a peer",
    );
    this.timer = setTimeout(() => this.forgetRest(), this.o.keepMs);
    this.timer.unref();
  }

  /** The manager's hook: load the stream's snapshot (if any) and say where to resume. */
  readonly resumeOf = (ref: StreamRef): ResumePoint | undefined => {
    const s = this.pending.get(ref.streamId);
    if (s === undefined) return undefined;
    this.pending.delete(ref.streamId);
    const m = this.link.metrics;
    if (s.ref.pod !== ref.pod || s.ref.model !== ref.model || s.ref.rank !== ref.rank) {
      m.catchUpStreams.inc({ result: "mismatch" });
      return undefined;
    }
    const n = this.index.importStream?.(ref, s.data) ?? 0;
    m.catchUpStreams.inc({ result: "loaded" });
    this.log.info(
      { event: "cluster.catchup_stream", stream: ref.streamId, seq: s.point.seq, entries: n },
      "stream loaded from the peer's snapshot: resuming from the engine's buffer",
    );
    return s.point;
  };

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.pending.clear();
  }

  private forgetRest(): void {
    if (this.pending.size === 0) return;
    this.link.metrics.catchUpStreams.inc({ result: "unused" }, this.pending.size);
    this.log.info(
      { event: "cluster.catchup_unused", streams: this.pending.size },
      "snapshot streams without a pod",
    );
    this.pending.clear();
  }
}
