/**
 * What a stream's own batches say about its configuration, checked as they are applied:
 *
 * - **Block size**: a `BlockStored` carries the engine's block size, so the stream's block size
 *   is learned from its events (the gateway hashes a request with each candidate's own size). A
 *   size the pod declares (engines file, annotation) that disagrees is logged once per stream
 *   (`subscriber.block_size_mismatch`) and counted per batch; the events win.
 * - **Rank**: a data-parallel rank's batches carry its `data_parallel_rank`. A batch with
 *   another rank means the stream reads another rank's socket (a layout kvsync and the engine
 *   disagree on): it is refused, the stream's entries are dropped once, logged once
 *   (`subscriber.wrong_rank`) and counted.
 *
 * Only events of the first KV-cache group (group_idx null or 0) teach the block size: the
 * index matches that group only.
 */
import type { EventBatch } from "../protocol/types.ts";
import type { Logger } from "../util/log.ts";
import type { StreamSpec } from "./stream-layout.ts";

export interface StreamCheckHooks {
  blockSizeMismatch(): void;
  learned(blockSize: number): void;
  wrongRank(): void;
  /** the stream's claims may be another rank's: drop them */
  dropClaims(): void;
}

export class StreamChecks {
  /** block size of the stream's last BlockStored (group 0), null before the first */
  blockSize: number | null = null;
  /** the declared size disagreed with the events (stays set for the life of the subscription) */
  blockSizeMismatch = false;
  /** batches refused because they carried another data-parallel rank */
  wrongRankBatches = 0;
  /** the rank the last refused batch carried */
  wrongRankSeen: number | null = null;

  constructor(
    private readonly spec: StreamSpec,
    private readonly declaredBlockSize: number | undefined,
    private readonly hooks: StreamCheckHooks,
    private readonly log: Logger,
  ) {}

  /** Check a batch before it is applied; false: refuse it. */
  admit(seq: number, batch: EventBatch): boolean {
    const want = this.spec.dpRank;
    if (want !== null && batch.dpRank !== null && batch.dpRank !== want) {
      this.refuseRank(seq, batch.dpRank, want);
      return false;
    }
    const evs = batch.events;
    const declared = this.declaredBlockSize;
    let disagrees = false;
    for (let i = 0; i < evs.length; i++) {
      const e = evs[i]!;
      if (e.type !== "BlockStored" || (e.groupIdx !== null && e.groupIdx !== 0) || e.blockSize <= 0) continue;
      if (e.blockSize !== this.blockSize) this.learn(e.blockSize, seq);
      if (declared !== undefined && e.blockSize !== declared) disagrees = true;
    }
    if (disagrees) this.hooks.blockSizeMismatch();
    return true;
  }

  private learn(size: number, seq: number): void {
    const prev = this.blockSize;
    this.blockSize = size;
    this.hooks.learned(size);
    const { ref } = this.spec;
    if (prev !== null) {
      this.log.warn(
        {
          event: "subscriber.block_size_changed",
          stream: ref.streamId,
          pod: ref.pod,
          seq,
          from: prev,
          to: size,
        },
        `stream ${ref.streamId}: the engine's block size changed from ${prev} to ${size}`,
      );
    } else {
      this.log.info(
        { event: "subscriber.block_size", stream: ref.streamId, pod: ref.pod, seq, blockSize: size },
        `stream ${ref.streamId}: block size ${size} (from its events)`,
      );
    }
    const d = this.declaredBlockSize;
    if (d !== undefined && d !== size && !this.blockSizeMismatch) {
      this.blockSizeMismatch = true;
      this.log.warn(
        {
          event: "subscriber.block_size_mismatch",
          stream: ref.streamId,
          pod: ref.pod,
          seq,
          declared: d,
          events: size,
        },
        `pod ${ref.pod} declares block size ${d} but its events carry ${size}: matching uses ${size}; fix the pod's block size (engines file blockSize / annotation kvsync.io/block-size)`,
      );
    }
  }

  private refuseRank(seq: number, got: number, want: number): void {
    this.wrongRankBatches++;
    this.wrongRankSeen = got;
    this.hooks.wrongRank();
    if (this.wrongRankBatches > 1) return;
    const { ref } = this.spec;
    this.log.error(
      {
        event: "subscriber.wrong_rank",
        stream: ref.streamId,
        pod: ref.pod,
        seq,
        expected: want,
        got,
        events: this.spec.events,
      },
      `stream ${ref.streamId} on ${this.spec.events} receives batches of data-parallel rank ${got}, not ${want}: the pod's port layout (events/replay base ports, data-parallel size, start rank) does not match the engine's; its batches are refused`,
    );
    this.hooks.dropClaims();
  }
}
