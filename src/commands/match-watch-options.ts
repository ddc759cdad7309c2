import { type Command, InvalidArgumentError } from "commander";
import { MATCH_WATCH_DEFAULTS, type MatchWatchOptions } from "../gateway/match-watch.ts";
import { opt, parseIntArg } from "../util/cli-options.ts";

/**
 * The never-matches watch's threshold (`kvsync gateway`; src/gateway/match-watch.ts): answered
 * requests in a row whose stream never came to hold their first block before the
 * `gateway.stream_never_matches` warning; 0 turns the watch off.
 */
export function addMatchWatchOptions(cmd: Command): Command {
  return cmd.addOption(
    opt(
      "--never-matches-after <n>",
      "probes in a row (answered requests whose stream never came to hold their first block) before gateway.stream_never_matches names the likely cause (0 = off)",
      "KVSYNC_NEVER_MATCHES_AFTER",
      MATCH_WATCH_DEFAULTS.minMisses,
    ).argParser((v) => {
      const n = parseIntArg(v);
      if (n < 0) throw new InvalidArgumentError(`must be >= 0: ${v}`);
      return n;
    }),
  );
}

export function matchWatchFrom(o: Record<string, unknown>): {
  matchWatch: Partial<MatchWatchOptions> | false;
} {
  const n = o.neverMatchesAfter as number;
  return { matchWatch: n === 0 ? false : { minMisses: n } };
}
