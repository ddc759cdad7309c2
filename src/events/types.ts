import type { PodInfo } from "../discovery/types.ts";

/** A stream's id: the pod's name, or "<pod>#<rank>" for a data-parallel rank. */
export function streamIdOf(pod: string, rank: number | null): string {
  return rank === null ? pod : `${pod}#${rank}`;
}

/** One event stream of a pod: rank null for a single-rank pod, else its data-parallel rank. */
export interface PodStream {
  streamId: string;
  rank: number | null;
}

/** each pod object's streams (podStreamIds), dropped with the object */
const known = new WeakMap<object, { name: string; streams: readonly PodStream[] }>();

/**
 * The pod → streams mapping, the one place it is written: one stream per data-parallel rank
 * (`<pod>#<r>`), or the pod itself (`<pod>`, rank null) when it has a single rank. The manager
 * runs a subscriber per stream, the planner makes a candidate of each (per request: the list is
 * kept per pod object, so routing allocates nothing here), the gateway forgets each.
 */
export function podStreamIds(pod: Pick<PodInfo, "name" | "dataParallelSize">): readonly PodStream[] {
  const dp = Math.max(1, Math.floor(pod.dataParallelSize || 1));
  const hit = known.get(pod);
  // checked, not trusted: a pod object could be changed in place
  if (hit !== undefined && hit.name === pod.name && hit.streams.length === dp) return hit.streams;
  const streams: PodStream[] = new Array(dp);
  if (dp === 1) streams[0] = { streamId: pod.name, rank: null };
  else for (let r = 0; r < dp; r++) streams[r] = { streamId: streamIdOf(pod.name, r), rank: r };
  known.set(pod, { name: pod.name, streams });
  return streams;
}

/** Per-stream state, driven by socket monitor events and sequence tracking. */
/** `suspect`: connected, but showed signs of garbling; rebuilt once clean (suspicion.ts). */
export type StreamState = "connecting" | "live" | "replaying" | "resyncing" | "suspect" | "down";

/** Why a stream was held back (inbox.ts): its buffer was full (reading paused), a live frame was
 *  shed (the buffer stayed full past the longest pause), or its apply slice ran out. */
export type ThrottleReason = "buffer_full" | "shed" | "slice";

/** A stream's buffer between its socket and the index (inbox.ts). */
export interface StreamFlow {
  /** bytes received and not applied yet, and the most there ever were */
  bufferedBytes: number;
  peakBufferedBytes: number;
  /** the most a queued live frame ever brought it to (under the budget + one frame; replay answers may go beyond) */
  peakLiveBytes: number;
  /** reports waiting */
  queued: number;
  /** times reading paused on a full buffer, and for how long in total (ms) */
  pauses: number;
  pausedMs: number;
  /** apply slices that ended with work left */
  slicesCut: number;
  /** live frames dropped because the buffer stayed full past the longest wait (replayed later) */
  shed: number;
}

export interface StreamStatus {
  streamId: string;
  pod: string;
  rank: number | null;
  model: string;
  state: StreamState;
  /** last applied seq, null before the first batch */
  lastSeq: number | null;
  eventsApplied: number;
  decodeErrors: number;
  gaps: number;
  replays: number;
  /** unrecoverable gaps (entries dropped and rebuilt) */
  resyncs: number;
  /** engine restarts detected (seq went backwards / another batch at our last seq) */
  restarts?: number;
  /** block size the stream's events carry (null before its first BlockStored) */
  blockSize?: number | null;
  /** the pod declares another block size than its events carry */
  blockSizeMismatch?: boolean;
  /** batches refused because they carried another data-parallel rank */
  wrongRankBatches?: number;
  /** event lag (s): the last 1 s window's smallest batch lag, or the last batch's; null when not live */
  lagSeconds?: number | null;
  /** how far routing trusts the stream's claims (0..1), when the subscriber weighs them */
  trust?: number | null;
}

/**
 * Keeps one subscriber per (pod, rank) in step with discovery. The gateway and the admin API
 * read stream states from it; only `live` streams' cache counts for routing.
 */
export interface SubscriberManagerLike {
  /** Reconcile with the pods discovery reports (start, restart on address change, stop). */
  setPods(pods: PodInfo[]): void;
  statuses(): StreamStatus[];
  status(streamId: string): StreamStatus | undefined;
  /** why a pod's streams are not subscribed (its port layout cannot work), or null */
  layoutError?(pod: string): string | null;
  close(): Promise<void>;
}
