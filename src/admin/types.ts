import type { IncomingMessage, ServerResponse } from "node:http";
import type { StreamStatus } from "../events/types.ts";

/** The admin API's shared shapes (its own file, so the admin API's parts import no cycle). */

export type AdminRouteHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

/** A configuration problem shown on a row of /admin/pods. */
export interface AdminWarning {
  /** layout_refused | wrong_rank | block_size_mismatch | never_matches | prediction_suspect */
  code: string;
  message: string;
}

export interface AdminPodEntry {
  name: string;
  rank: number | null;
  stream: string | null;
  model: string;
  lora: string[];
  ready: boolean;
  /** in rotation by the gateway's health signal (null: not watched) */
  healthy: boolean | null;
  /** why the pod is out of rotation (probe_timeout, connect, ...), null while healthy */
  healthReason: string | null;
  state: StreamStatus["state"] | null;
  lastSeq: number | null;
  eventsApplied: number;
  blocks: number;
  decodeErrors: number;
  gaps: number;
  replays: number;
  resyncs: number;
  restarts: number;
  /** block size the stream's events carry (null before its first BlockStored) */
  blockSize: number | null;
  /** block size the pod declares (engines file, annotation), null when it declares none */
  declaredBlockSize: number | null;
  warnings: AdminWarning[];
  /** event lag (s) of a live stream, null otherwise */
  lagSeconds: number | null;
  /** routing's trust in the stream's claims (0..1), null when not weighed */
  trust: number | null;
  /** the gateway's prediction feedback holds the stream's claims wrong (trust stays low) */
  suspect: boolean;
}
