/**
 * Keeps one `StreamSubscriber` per engine stream (pod, or pod and data-parallel rank) in step with
 * discovery, feeding one `PrefixIndex`.
 *
 * - New pod: its streams start. Pod gone: streams stop and their entries are dropped.
 * - Changed endpoints (events/replay address, rank count, model, block size): the old streams
 *   stop, their entries are dropped, new streams start.
 * - Flag changes (ready, LoRA list) keep the stream: a not-ready pod's cache is still tracked.
 * - Data parallel: rank r connects to the events and replay endpoints' port + r; its stream id
 *   is `<pod>#<r>` (a single-rank pod's stream id is the pod name, rank null).
 */
import { EventEmitter } from "node:events";
import type { Registry } from "prom-client";
import type { PodInfo } from "../discovery/types.ts";
import type { PrefixIndex, StreamRef } from "../index/types.ts";
import type { LayoutError } from "../protocol/endpoints.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { wallClockMs } from "../util/wall-clock.ts";
import { type ConfigMetrics, createConfigMetrics } from "./config-metrics.ts";
import type { EventSourceFactory } from "./event-source.ts";
import { createFlowMetrics, type FlowMetrics } from "./flow-metrics.ts";
import { instrumentIndex } from "./instrumented-index.ts";
import { LagWatch, type LagWatchOptions } from "./lag-watch.ts";
import { createSubscriberMetrics, type SubscriberMetrics } from "./metrics.ts";
import type { ResumePoint } from "./resume.ts";
import { StreamChecks } from "./stream-checks.ts";
import { podStreams, type StreamSpec, streamsOf } from "./stream-layout.ts";
import { StreamSubscriber, type SubscriberOptions } from "./subscriber.ts";
import type { StreamFlow, StreamState, StreamStatus, SubscriberManagerLike } from "./types.ts";
import { zmqEventSource } from "./zmq-source.ts";

/** Most streams one manager runs (pods x ranks): bounded like everything else. */
export const MAX_STREAMS = 20_000;

export interface SubscriberManagerOptions {
  index: PrefixIndex;
  registry?: Registry;
  log?: Logger;
  /** topic prefix to subscribe to; "" (default) = all */
  topic?: string;
  /** passed to every subscriber */
  subscriber?: Omit<SubscriberOptions, "log" | "logContext" | "fromSeq" | "resume">;
  /**
   * Asked once per stream before it starts: a point to resume from when the index was already
   * loaded up to it (a peer replica's snapshot, src/cluster/), else undefined.
   */
  resumeOf?: (ref: StreamRef) => ResumePoint | undefined;
  /** event lag and clock skew thresholds (lag-watch.ts) */
  lag?: LagWatchOptions;
  /** the streams' transport (default: ZeroMQ, zmq-source.ts) */
  source?: EventSourceFactory;
}

export type { PodStreams, StreamSpec } from "./stream-layout.ts";
export { podStreams, streamsOf };

function sameSpec(a: StreamSpec, b: StreamSpec): boolean {
  return (
    a.events === b.events &&
    a.replay === b.replay &&
    a.ref.model === b.ref.model &&
    a.ref.rank === b.ref.rank &&
    a.dpRank === b.dpRank
  );
}

interface Running {
  spec: StreamSpec;
  /** the pod's block size when it is part of the identity (a change restarts the stream) */
  blockSize: number | undefined;
  sub: StreamSubscriber;
  checks: StreamChecks;
  /** the last closed lag window's floor, else the last live batch's lag (s); null when not live */
  lagFloor: number | null;
  lastLag: number | null;
}

export interface SubscriberManagerEvents {
  state: [status: StreamStatus, previous: StreamState];
}

export class SubscriberManager
  extends EventEmitter<SubscriberManagerEvents>
  implements SubscriberManagerLike
{
  private readonly streams = new Map<string, Running>();
  private readonly podInfos = new Map<string, PodInfo>();
  /** pods whose port layout is refused, with why (logged when it first appears) */
  private readonly layoutErrors = new Map<string, LayoutError>();
  private readonly index: PrefixIndex;
  /** where batches go: the index, timed and counted when there are metrics (instrumented-index.ts) */
  private readonly applyTo: PrefixIndex;
  private readonly log: Logger;
  private readonly metrics: SubscriberMetrics | null;
  private readonly configMetrics: ConfigMetrics | null;
  private readonly flowMetrics: FlowMetrics | null;
  private readonly topic: string;
  private readonly subOpts: SubscriberManagerOptions["subscriber"];
  private readonly lagOpts: LagWatchOptions | undefined;
  private readonly source: EventSourceFactory;
  private readonly resumeOf: SubscriberManagerOptions["resumeOf"];
  private closed = false;

  constructor(opts: SubscriberManagerOptions) {
    super();
    this.index = opts.index;
    this.log = opts.log ?? silentLogger();
    this.topic = opts.topic ?? "";
    this.subOpts = opts.subscriber;
    this.lagOpts = opts.lag;
    this.source = opts.source ?? zmqEventSource;
    this.resumeOf = opts.resumeOf;
    this.metrics = opts.registry
      ? createSubscriberMetrics(opts.registry, () => this.statuses(), this.index)
      : null;
    this.applyTo = this.metrics ? instrumentIndex(this.index, this.metrics) : this.index;
    this.configMetrics = opts.registry ? createConfigMetrics(opts.registry) : null;
    this.flowMetrics = opts.registry ? createFlowMetrics(opts.registry, () => this.flows()) : null;
  }

  /** The pods last passed to setPods, sorted by name. */
  pods(): PodInfo[] {
    return [...this.podInfos.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  pod(name: string): PodInfo | undefined {
    return this.podInfos.get(name);
  }

  setPods(pods: PodInfo[]): void {
    if (this.closed) return;
    const desired = new Map<string, { spec: StreamSpec; blockSize: number | undefined }>();
    this.podInfos.clear();
    const refused = new Map<string, LayoutError>();
    for (const p of pods) {
      this.podInfos.set(p.name, p);
      const { specs, error } = podStreams(p);
      if (error !== null) refused.set(p.name, error);
      for (const spec of specs) {
        if (desired.size >= MAX_STREAMS) {
          this.log.error({ event: "subscriber.too_many_streams", max: MAX_STREAMS }, "stream cap reached");
          break;
        }
        desired.set(spec.ref.streamId, { spec, blockSize: p.blockSize });
      }
    }
    for (const [id, run] of [...this.streams]) {
      const want = desired.get(id);
      if (want && sameSpec(want.spec, run.spec) && want.blockSize === run.blockSize) continue;
      this.stopStream(id, run, want ? "endpoints changed" : "pod removed");
    }
    for (const [id, want] of desired) {
      if (!this.streams.has(id)) this.startStream(want.spec, want.blockSize);
    }
    this.updateLayoutErrors(refused);
  }

  /** Why a pod's streams are not subscribed (its port layout collides), or null. */
  layoutError(pod: string): string | null {
    return this.layoutErrors.get(pod)?.message ?? null;
  }

  /** The block size a stream's events carry (null before its first BlockStored, or no such stream). */
  blockSizeOf(streamId: string): number | null {
    return this.streams.get(streamId)?.checks.blockSize ?? null;
  }

  private updateLayoutErrors(refused: Map<string, LayoutError>): void {
    for (const [pod, err] of this.layoutErrors) {
      if (refused.get(pod)?.message === err.message) continue;
      this.layoutErrors.delete(pod);
      this.configMetrics?.removePod(pod);
      if (this.podInfos.has(pod))
        this.log.info({ event: "subscriber.layout_ok", pod }, `pod ${pod}: port layout accepted`);
    }
    for (const [pod, err] of refused) {
      if (this.layoutErrors.has(pod)) continue;
      this.layoutErrors.set(pod, err);
      this.configMetrics?.layoutRefused.set({ pod, reason: err.code }, 1);
      this.log.error(
        { event: "subscriber.layout_refused", pod, reason: err.code, err: err.message },
        `pod ${pod}: not subscribing, its port layout cannot work: ${err.message}`,
      );
    }
  }

  statuses(): StreamStatus[] {
    const out: StreamStatus[] = [];
    for (const run of this.streams.values()) out.push(this.statusOf(run));
    return out.sort((a, b) => (a.streamId < b.streamId ? -1 : a.streamId > b.streamId ? 1 : 0));
  }

  status(streamId: string): StreamStatus | undefined {
    const run = this.streams.get(streamId);
    return run ? this.statusOf(run) : undefined;
  }

  /** Where a peer could resume a stream from (live, last batch remembered), or null. */
  resumePoint(streamId: string): ResumePoint | null {
    return this.streams.get(streamId)?.sub.resumePoint() ?? null;
  }

  /**
   * Rebuild a stream: drop its entries and replay its engine's buffer from the oldest batch (the
   * gateway's prediction feedback asks for it). False: no such stream, or not now (down, replaying).
   */
  rebuild(streamId: string, reason: string): boolean {
    return this.streams.get(streamId)?.sub.rebuild(reason) ?? false;
  }

  /** A stream's buffer between its socket and the index (inbox.ts), or undefined. */
  flow(streamId: string): StreamFlow | undefined {
    return this.streams.get(streamId)?.sub.flow();
  }

  private *flows(): Iterable<[string, StreamFlow]> {
    for (const [id, run] of this.streams) yield [id, run.sub.flow()];
  }

  /** The stream specs currently running (endpoints per rank). */
  specs(): StreamSpec[] {
    return [...this.streams.values()].map((r) => r.spec);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const runs = [...this.streams.values()];
    this.streams.clear();
    await Promise.all(runs.map((r) => r.sub.close()));
  }

  private statusOf(run: Running): StreamStatus {
    const { ref } = run.spec;
    const s = run.sub;
    return {
      streamId: ref.streamId,
      pod: ref.pod,
      rank: ref.rank,
      model: ref.model,
      state: s.state(),
      lastSeq: s.lastSeq,
      eventsApplied: s.eventsApplied,
      decodeErrors: s.decodeErrors,
      gaps: s.gaps,
      replays: s.replays,
      resyncs: s.resyncs,
      restarts: s.restarts,
      blockSize: run.checks.blockSize,
      blockSizeMismatch: run.checks.blockSizeMismatch,
      wrongRankBatches: run.checks.wrongRankBatches,
      lagSeconds: run.lagFloor ?? run.lastLag,
    };
  }

  private startStream(spec: StreamSpec, blockSize: number | undefined): void {
    const { ref } = spec;
    const id = ref.streamId;
    const index = this.index;
    const applyTo = this.applyTo;
    const m = this.metrics;
    const log = this.log;
    const cm = this.configMetrics;
    const fm = this.flowMetrics;
    const run: Running = {
      spec,
      blockSize,
      sub: undefined as unknown as StreamSubscriber,
      checks: new StreamChecks(
        spec,
        blockSize,
        {
          blockSizeMismatch: () => cm?.blockSizeMismatches.inc({ stream: id }),
          learned: (size) => cm?.blockSizeTokens.set({ stream: id }, size),
          wrongRank: () => cm?.wrongRankBatches.inc({ stream: id }),
          dropClaims: () => index.dropStream(id),
        },
        log,
      ),
      lagFloor: null,
      lastLag: null,
    };
    const lag = new LagWatch(
      {
        lag: (sec) => {
          run.lastLag = sec;
          m?.lagSeconds.observe(sec);
        },
        lagFloor: (sec) => {
          run.lagFloor = sec;
          m?.lagFloorSeconds.set({ stream: id }, sec);
        },
        lagHigh: () => m?.lagHigh.inc({ stream: id }),
        skew: (sec) => {
          m?.clockSkews.inc({ stream: id });
          m?.clockSkewSeconds.set({ stream: id }, sec);
        },
        skewCleared: () => m?.clockSkewSeconds.set({ stream: id }, 0),
      },
      log,
      { stream: id, pod: ref.pod, rank: ref.rank },
      this.lagOpts,
      wallClockMs,
    );
    const sub = new StreamSubscriber(
      { events: spec.events, replay: spec.replay, topic: this.topic },
      {
        batch: (seq, batch) => {
          if (!run.checks.admit(seq, batch)) return;
          // live batches only: those applied during a replay are as old as the gap they fill;
          // the lag ends once the batch is in the index (its stamp to applied)
          const live = run.sub.state() === "live";
          applyTo.applyBatch(ref, batch);
          if (live) lag.observe(batch.ts, seq);
          else lag.reset();
        },
        decodeError: () => m?.decodeErrors.inc({ stream: id }),
        drop: (reason) => {
          index.dropStream(id);
          if (reason === "restart") m?.restarts.inc({ stream: id });
          else if (reason === "rebuild") m?.rebuilds.inc({ stream: id });
          else m?.resyncs.inc({ stream: id });
        },
        gap: () => m?.gaps.inc({ stream: id }),
        stale: () => m?.staleBatches.inc({ stream: id }),
        stalled: () => m?.stalls.inc({ stream: id }),
        suspected: () => m?.suspects.inc({ stream: id }),
        verified: () => m?.verified.inc({ stream: id }),
        reconnected: () => m?.reconnects.inc({ stream: id }),
        socketReplaced: () => m?.socketReplacements.inc({ stream: id }),
        bogus: () => m?.bogusSeqs.inc({ stream: id }),
        decodeRepaired: () => m?.decodeRepairs.inc({ stream: id }),
        replayThrottled: () => m?.replaysThrottled.inc({ stream: id }),
        replayRequested: () => m?.replays.inc({ stream: id }),
        replayFailed: () => m?.replayFailures.inc({ stream: id }),
        throttled: (reason) => fm?.throttled(id, reason),
        stateChanged: (state, prev) => {
          if (this.streams.get(id) !== run) return;
          if (state !== "live") {
            run.lagFloor = null;
            run.lastLag = null;
          }
          log.info(
            { event: "subscriber.state", stream: id, pod: ref.pod, state, previous: prev },
            "stream state",
          );
          this.emit("state", this.statusOf(run), prev);
        },
      },
      {
        ...this.subOpts,
        resume: this.resumeOf?.(ref),
        log,
        logContext: { pod: ref.pod, rank: ref.rank, stream: id },
      },
      this.source,
    );
    run.sub = sub;
    this.streams.set(id, run);
    log.info(
      { event: "subscriber.start", stream: id, pod: ref.pod, events: spec.events, replay: spec.replay },
      "starting stream",
    );
    sub.start();
  }

  private stopStream(id: string, run: Running, why: string): void {
    this.streams.delete(id);
    this.log.info({ event: "subscriber.stop", stream: id, pod: run.spec.ref.pod, why }, "stopping stream");
    // the subscriber's callbacks are ignored from here on (they check the map), so the drop
    // below is the stream's last word in the index
    void run.sub.close();
    this.index.dropStream(id);
    this.metrics?.removeStream(id);
    this.configMetrics?.removeStream(id);
    this.flowMetrics?.removeStream(id);
  }
}
