/**
 * The seam between a stream subscriber (subscriber.ts) and the transport that carries its
 * engine's KV events. A source delivers each live message as the engine's multipart frames
 * `[topic, seq, payload]` and answers a replay request with `(seq, payload)` pairs and an end; it
 * says when its connection is up or down. Every decision stays with the subscriber: sequence
 * tracking, gap replay, restart detection, suspicion. The ZeroMQ source (zmq-source.ts: a SUB
 * and a DEALER per replay) is the one in use; another transport (a JetStream consumer, a recorded
 * file) plugs in as another `EventSourceFactory`.
 */
import type { Logger } from "../util/log.ts";
import type { DEFAULTS, StreamEndpoints, SubscriberOptions } from "./subscriber-options.ts";

/** Why a connection went down: the peer closed it, it went silent past the heartbeat, or the
 *  transport replaced it (a protocol error, no reconnect in sight, a handshake that never ends,
 *  a failed receive). */
export type DownCause =
  | "closed"
  | "stalled"
  | "protocol_error"
  | "watchdog"
  | "handshake_stuck"
  | "socket_error";

/** What a replay request brings back, in order. */
export interface ReplayHandlers {
  message(seq: number, payload: Uint8Array): void;
  end(): void;
  failed(fromSeq: number, err: Error, received: number): void;
  /** a frame of the answer that does not decode (the tracker sees the hole it leaves) */
  badFrame(err: Error): void;
  throttled(delayMs: number): void;
  /** a replay finished one way or the other */
  settled(): void;
}

/** What a source reports to its subscriber; called from the event loop, never re-entrantly. */
export interface EventSourceHandlers {
  /** connected: a completed handshake, or a received message */
  up(): void;
  down(cause: DownCause, silentMs: number): void;
  /**
   * One live message: `[topic, seq, payload]`. A returned promise asks the source to read
   * nothing more until it settles (the stream's buffer is full, or it yields a turn).
   */
  frames(frames: Buffer[]): Promise<void> | undefined;
  /** the connection is being replaced (its session ended for good or its receive failed) */
  replaced?(cause: DownCause, delayMs: number): void;
  replay: ReplayHandlers;
}

export interface EventSource {
  /** true when the source can answer replay requests (the tracker asks none otherwise) */
  readonly replays: boolean;
  start(): void;
  /** Replay from `fromSeq`; `attempt` > 0 retries one that fell short (the source paces it). */
  requestReplay(fromSeq: number, attempt: number): void;
  /** Stop delivering; resolves once nothing more will be reported. */
  close(): Promise<void>;
}

/** A subscriber's options with their defaults applied. */
export type ResolvedSubscriberOptions = typeof DEFAULTS & SubscriberOptions;

export type EventSourceFactory = (
  endpoints: StreamEndpoints,
  opts: ResolvedSubscriberOptions,
  on: EventSourceHandlers,
  log: Logger,
  ctx: () => Record<string, unknown>,
) => EventSource;
