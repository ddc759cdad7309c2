import type { PodInfo } from "../discovery/types.ts";

/** A stream's id: the pod's name, or "<pod>#<rank>" for a data-parallel rank. */
export function streamIdOf(pod: string, rank: number | null): string {
  return rank === null ? pod : `${pod}#${rank}`;
}

/** Per-stream state, driven by socket monitor events and sequence tracking. */
/** `suspect`: connected, but showed signs of garbling; rebuilt once clean (suspicion.ts). */
export type StreamState = "connecting" | "live" | "replaying" | "resyncing" | "suspect" | "down";

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
