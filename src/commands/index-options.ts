/**
 * The index and event-stream flags `kvsync gateway` and `kvsync index` share (both run the fleet
 * wiring of events/fleet.ts): the topic, the index's caps and up-front size, the replay timeout.
 */
import { type Command, InvalidArgumentError } from "commander";
import type { SyncIndexOptions } from "../index/index.ts";
import { opt, parseIntArg } from "../util/cli-options.ts";

function positive(v: string): number {
  const n = parseIntArg(v);
  if (n < 1) throw new InvalidArgumentError(`must be >= 1: ${v}`);
  return n;
}

export function addIndexOptions(cmd: Command): Command {
  return cmd
    .addOption(opt("--topic <topic>", 'KV-event topic prefix ("" = all)', "KVSYNC_TOPIC", ""))
    .addOption(
      opt(
        "--max-entries <n>",
        "index: global cap on (block, stream) entries",
        "KVSYNC_MAX_ENTRIES",
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--max-entries-per-stream <n>",
        "index: per-stream cap on entries",
        "KVSYNC_MAX_ENTRIES_PER_STREAM",
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--index-initial-entries <n>",
        "index: entries to allocate up front (a fleet's expected size: no growth until then)",
        "KVSYNC_INDEX_INITIAL_ENTRIES",
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--replay-timeout-ms <ms>",
        "replay idle timeout before a gap counts as lost",
        "KVSYNC_REPLAY_TIMEOUT_MS",
        3000,
      ).argParser(positive),
    );
}

/** The index options the flags give (only those set: the index's defaults stand for the rest). */
export function indexOptionsFrom(o: Record<string, unknown>): SyncIndexOptions {
  return {
    ...(o.maxEntries !== undefined ? { maxEntries: o.maxEntries as number } : {}),
    ...(o.maxEntriesPerStream !== undefined ? { maxEntriesPerStream: o.maxEntriesPerStream as number } : {}),
    ...(o.indexInitialEntries !== undefined ? { initialCapacity: o.indexInitialEntries as number } : {}),
  };
}
