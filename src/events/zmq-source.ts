/**
 * The ZeroMQ event source: a SUB on the engine's PUB endpoint for live messages (sub-socket.ts)
 * and, when the engine has a replay endpoint, a fresh DEALER on its ROUTER per replay request
 * (replay-client.ts). This file only wires the two to the subscriber's handlers and maps the
 * subscriber's options onto theirs.
 */
import { DEFAULT_DECODE_LIMITS } from "../protocol/decode.ts";
import type { Logger } from "../util/log.ts";
import type {
  EventSource,
  EventSourceFactory,
  EventSourceHandlers,
  ResolvedSubscriberOptions,
} from "./event-source.ts";
import { ReplayClient } from "./replay-client.ts";
import { SubSocket } from "./sub-socket.ts";
import type { StreamEndpoints } from "./subscriber-options.ts";

class ZmqEventSource implements EventSource {
  private readonly socket: SubSocket;
  private readonly replay: ReplayClient | null;

  constructor(
    ends: StreamEndpoints,
    o: ResolvedSubscriberOptions,
    on: EventSourceHandlers,
    log: Logger,
    ctx: () => Record<string, unknown>,
  ) {
    this.replay =
      ends.replay === null
        ? null
        : new ReplayClient(
            ends.replay,
            {
              replayTimeoutMs: o.replayTimeoutMs,
              maxReplayBatches: o.maxReplayBatches,
              maxReplaysPerSecond: o.maxReplaysPerSecond,
              replayRetryMs: o.replayRetryMs,
              retryMaxMs: o.reconnectMaxMs,
              receiveMs: o.streamSliceMs / 2,
              share: o.streamEventSharePct / 100,
            },
            on.replay,
            log,
            ctx,
          );
    this.socket = new SubSocket(
      ends.events,
      ends.topic,
      {
        reconnectMs: o.reconnectMs,
        reconnectMaxMs: o.reconnectMaxMs,
        receiveHighWaterMark: o.receiveHighWaterMark,
        heartbeatIntervalMs: o.heartbeatIntervalMs,
        heartbeatTimeoutMs: o.heartbeatTimeoutMs,
        connectTimeoutMs: o.connectTimeoutMs,
        watchdogMs: o.watchdogMs,
        retryGraceMs: Math.max(500, o.reconnectMaxMs),
        // no frame larger than a batch that could decode
        maxFrameBytes: o.decodeLimits?.maxPayloadBytes ?? DEFAULT_DECODE_LIMITS.maxPayloadBytes,
      },
      on,
      log,
      ctx,
    );
  }

  get replays(): boolean {
    return this.replay !== null;
  }

  start(): void {
    this.socket.start();
  }

  requestReplay(fromSeq: number, attempt: number): void {
    this.replay?.request(fromSeq, attempt);
  }

  async close(): Promise<void> {
    await Promise.all([this.socket.close(), this.replay?.close()]);
  }
}

/** The default source of `kvsync gateway`, `kvsync index` and `kvsync events tail`. */
export const zmqEventSource: EventSourceFactory = (ends, opts, on, log, ctx) =>
  new ZmqEventSource(ends, opts, on, log, ctx);
