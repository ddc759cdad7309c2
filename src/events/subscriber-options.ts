/**
 * What a stream subscriber (subscriber.ts) takes and hands on: its endpoints, the consumer it
 * reports to, and its options with their defaults.
 */
import type { DecodeLimits } from "../protocol/decode.ts";
import type { EventBatch } from "../protocol/types.ts";
import type { Logger } from "../util/log.ts";
import type { ResumePoint } from "./resume.ts";
import type { DropReason } from "./seq-tracker.ts";
import type { StreamState, ThrottleReason } from "./types.ts";

export interface StreamEndpoints {
  /** PUB endpoint to connect the SUB to, e.g. tcp://10.0.0.5:5557 */
  events: string;
  /** replay ROUTER endpoint, or null when the engine has none */
  replay: string | null;
  /** topic prefix to subscribe to; "" = everything */
  topic: string;
}

/** What a subscriber hands on; called synchronously and in seq order. */
export interface StreamConsumer {
  batch(seq: number, batch: EventBatch, unknownEvents: number): void;
  /** A message that could not be decoded (seq null when even the framing was bad). */
  decodeError(seq: number | null, err: Error): void;
  /** Every entry of the stream must be forgotten. */
  drop(reason: DropReason): void;
  gap?(from: number, to: number, recoverable: boolean): void;
  /** the stream became suspect (signs of garbling) */
  suspected?(): void;
  /** a suspect stream's applied batches all matched the engine's: trusted again, nothing dropped */
  verified?(): void;
  /** the connection went silent past the heartbeat timeout */
  stalled?(): void;
  /** connected again after being down */
  reconnected?(): void;
  /** the SUB socket was replaced (its session ended for good) */
  socketReplaced?(): void;
  /** an undecodable batch was applied from a good copy */
  decodeRepaired?(seq: number): void;
  /** a live seq beyond the engine's newest, discarded */
  bogus?(seq: number): void;
  /** a replay was held back by the per-stream rate bound */
  replayThrottled?(delayMs: number): void;
  /** a late copy of an old batch, verified stale and ignored */
  stale?(seq: number): void;
  replayRequested?(fromSeq: number): void;
  /** a replay could not be completed (timeout, socket error) */
  replayFailed?(fromSeq: number, err: Error): void;
  stateChanged?(state: StreamState, previous: StreamState): void;
  /** the stream's reading paused on a full buffer, or its apply slice ended with work left */
  throttled?(reason: ThrottleReason): void;
}

export interface SubscriberOptions {
  /** Idle time without a replay answer before the replay counts as failed (ms). */
  replayTimeoutMs?: number;
  /** Live batches kept while a replay runs. */
  maxPending?: number;
  /** Most batches one replay may deliver before it is cut off (and counted as failed). */
  maxReplayBatches?: number;
  decodeLimits?: Partial<DecodeLimits>;
  /** First reconnect delay (ms); zmq doubles it up to `reconnectMaxMs`, jittered per socket. */
  reconnectMs?: number;
  reconnectMaxMs?: number;
  /** ZMTP heartbeat PING period (ms; 0 = no heartbeats). */
  heartbeatIntervalMs?: number;
  /** No answer to a PING for this long takes the connection (and the stream) down (ms). */
  heartbeatTimeoutMs?: number;
  /** A TCP connect attempt taking longer is abandoned and retried (ms). */
  connectTimeoutMs?: number;
  /** A down SUB with no reconnect attempt for this long is replaced (ms). */
  watchdogMs?: number;
  /** A suspect stream (signs of garbling) is audited once clean for this long (ms; suspicion.ts). */
  suspectCleanMs?: number;
  /** Batches a suspect stream logs for its audit (a bound; audited every tenth of it). */
  suspectLogSize?: number;
  /** Receive high-water mark of the SUB socket (messages). */
  receiveHighWaterMark?: number;
  /** Replay from this seq on first connect instead of the engine's whole buffer. */
  fromSeq?: number;
  /**
   * The index already holds the stream up to this point (a peer replica's snapshot): on first
   * connect verify it against the engine and take what follows (wins over fromSeq).
   */
  resume?: ResumePoint;
  /** Ask for the engine's buffer on first connect (default true; `events tail` starts live). */
  initialReplay?: boolean;
  /**
   * A live stream silent for this long asks the replay endpoint for anything after its last seq,
   * so a lost final batch does not leave the index stale until the next one (ms; 0 = never).
   */
  tailCheckMs?: number;
  /**
   * Replays one stream may start per second on average (a token bucket with this many tokens):
   * whatever goes wrong, a stream never asks its engine for replays in a tight loop.
   */
  maxReplaysPerSecond?: number;
  /** First delay before a replay that retries one that fell short (ms; doubles per attempt). */
  replayRetryMs?: number;
  /**
   * Bytes a stream may hold received but not yet applied; beyond it the stream stops reading its
   * socket until half of it is applied (inbox.ts). Replay answers count but are never refused.
   */
  streamBufferBytes?: number;
  /** Apply time per event-loop turn, shared by all streams with work (ms; turn-scheduler.ts). */
  streamSliceMs?: number;
  /** Most of the wall time the event work of all streams may take, in percent (turn-scheduler.ts). */
  streamEventSharePct?: number;
  /** Events one stream applies per event-loop turn at most. */
  streamSliceEvents?: number;
  /** Frames one stream reads per event-loop turn before its receive loop waits for the next. */
  streamBurstMessages?: number;
  log?: Logger;
  /** Log context (pod, stream). */
  logContext?: Record<string, unknown>;
}

export const DEFAULTS = {
  replayTimeoutMs: 3000,
  maxPending: 10_000,
  maxReplayBatches: 200_000,
  reconnectMs: 100,
  reconnectMaxMs: 1000,
  heartbeatIntervalMs: 1000,
  heartbeatTimeoutMs: 3000,
  connectTimeoutMs: 1000,
  watchdogMs: 5000,
  suspectCleanMs: 1000,
  suspectLogSize: 20_000,
  // low on purpose: libzmq stops reading a connection whose queue is full and only resumes at
  // half of it, deaf to heartbeats meanwhile (a long deaf spell drops the connection, and a
  // reconnect then can abort the process: libzmq #3937/#4767); a small queue refills in ms.
  // What the engine drops meanwhile is a gap the replay fills. Also bounds the bytes held there.
  receiveHighWaterMark: 1000,
  streamBufferBytes: 4 * 1024 * 1024,
  streamSliceMs: 2,
  streamEventSharePct: 100,
  streamSliceEvents: 5000,
  streamBurstMessages: 256,
  tailCheckMs: 10_000,
  maxReplaysPerSecond: 10,
  replayRetryMs: 100,
};

export function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
