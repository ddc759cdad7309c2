import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { addMatchWatchOptions, matchWatchFrom } from "../../../src/commands/match-watch-options.ts";

function parse(argv: string[], env: Record<string, string> = {}) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const cmd = addMatchWatchOptions(new Command("x").exitOverride().configureOutput({ writeErr: () => {} }));
    cmd.parse(argv, { from: "user" });
    return matchWatchFrom(cmd.opts());
  } finally {
    for (const k of Object.keys(env)) if (!(k in saved)) delete process.env[k];
  }
}

test("never-matches threshold: default, flag, env twin, 0 turns the watch off, negatives refused", () => {
  assert.deepEqual(parse([]), { matchWatch: { minMisses: 5 } });
  assert.deepEqual(parse(["--never-matches-after", "12"]), { matchWatch: { minMisses: 12 } });
  assert.deepEqual(parse([], { KVSYNC_NEVER_MATCHES_AFTER: "3" }), { matchWatch: { minMisses: 3 } });
  assert.deepEqual(parse(["--never-matches-after", "0"]), { matchWatch: false });
  assert.throws(() => parse(["--never-matches-after", "-1"]), /must be >= 0/);
  assert.throws(() => parse(["--never-matches-after", "x"]), /not an integer/);
});
