/**
 * `kvsync events tail <pub-endpoint> [--replay <endpoint>] [--from-seq N] [--topic T]`
 *
 * Prints one JSON line per batch on stdout, in seq order (`batchToJson`). With `--replay`, gaps
 * are filled through the engine's replay socket before the next batch is printed, and
 * `--from-seq N` first asks for the buffered batches from N. Anything else goes to stderr as JSON
 * lines: a malformed message `{"seq": n|null, "error": "..."}`, a gap
 * `{"gap": {"from", "to"}, "recoverable": bool}`, an engine restart `{"restart": true}` and a gap
 * that could not be filled `{"resync": true}` (batches then continue from what the engine has).
 */
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { StreamSubscriber } from "../events/subscriber.ts";
import { zmqEventSource } from "../events/zmq-source.ts";
import { batchToJson } from "../protocol/index.ts";
import { opt, parseIntArg } from "../util/cli-options.ts";
import { createLogger } from "../util/log.ts";
import { addStreamHealthOptions, streamHealthFrom } from "./stream-options.ts";

interface TailOptions {
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  reconnectMaxMs?: number;
  replay?: string;
  fromSeq?: number;
  topic: string;
  replayTimeoutMs: number;
}

function nonNegative(v: string): number {
  const n = parseIntArg(v);
  if (n < 0) throw new InvalidArgumentError(`must be >= 0: ${v}`);
  return n;
}

/** A ZeroMQ endpoint a socket can connect to. */
export function parseEndpoint(v: string): string {
  if (/^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/\s*]+):\d{1,5}$/.test(v) || /^(ipc|inproc):\/\/\S+$/.test(v))
    return v;
  throw new InvalidArgumentError(`not a ZeroMQ endpoint to connect to (tcp://host:port, ipc://path): ${v}`);
}

function writeLine(stream: NodeJS.WriteStream, obj: unknown): void {
  stream.write(`${JSON.stringify(obj)}\n`);
}

export async function tail(endpoint: string, o: TailOptions): Promise<void> {
  if (o.fromSeq !== undefined && !o.replay)
    throw new InvalidArgumentError("--from-seq needs --replay <endpoint>");
  const log = createLogger("events-tail", process.env.KVSYNC_LOG_LEVEL ?? "silent");
  const sub = new StreamSubscriber(
    { events: endpoint, replay: o.replay ?? null, topic: o.topic },
    {
      batch: (seq, batch) => writeLine(process.stdout, batchToJson(seq, batch)),
      decodeError: (seq, err) => writeLine(process.stderr, { seq, error: err.message }),
      drop: (reason) =>
        writeLine(process.stderr, reason === "restart" ? { restart: true } : { resync: true }),
      gap: (from, to, recoverable) => writeLine(process.stderr, { gap: { from, to }, recoverable }),
    },
    {
      log,
      fromSeq: o.fromSeq,
      initialReplay: false,
      replayTimeoutMs: o.replayTimeoutMs,
      ...streamHealthFrom(o as unknown as Record<string, unknown>),
      logContext: { endpoint },
    },
    zmqEventSource,
  );
  sub.start();
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await sub.close();
}

export function register(program: Command): void {
  const events = program.command("events").description("inspect engine KV-event streams");
  const tailCmd = events
    .command("tail")
    .description("print an engine's KV-event batches as JSON lines, in seq order")
    .argument("<pub-endpoint>", "the engine's PUB endpoint, e.g. tcp://127.0.0.1:5557", parseEndpoint)
    .addOption(
      opt("--replay <endpoint>", "replay ROUTER endpoint: fill gaps", "KVSYNC_EVENTS_REPLAY").argParser(
        parseEndpoint,
      ),
    )
    .addOption(
      opt(
        "--from-seq <n>",
        "first ask for buffered batches from this seq (needs --replay)",
        "KVSYNC_EVENTS_FROM_SEQ",
      ).argParser(nonNegative),
    )
    .addOption(opt("--topic <topic>", 'topic prefix to subscribe to ("" = all)', "KVSYNC_EVENTS_TOPIC", ""))
    .addOption(
      opt(
        "--replay-timeout-ms <ms>",
        "replay idle timeout",
        "KVSYNC_EVENTS_REPLAY_TIMEOUT_MS",
        3000,
      ).argParser(nonNegative),
    );
  addStreamHealthOptions(tailCmd, "KVSYNC_EVENTS_");
  tailCmd.action(async (endpoint: string, o: TailOptions, cmd: Command) => {
    if (o.fromSeq !== undefined && !o.replay) cmd.error("error: --from-seq needs --replay <endpoint>");
    await tail(endpoint, o);
    process.exit(0);
  });
}
