import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { addSignalOptions, signalOptionsFrom } from "../../../src/commands/stream-options.ts";

function parse(argv: string[], env: Record<string, string> = {}) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const cmd = addSignalOptions(new Command("x").exitOverride().configureOutput({ writeErr: () => {} }));
    cmd.parse(argv, { from: "user" });
    return signalOptionsFrom(cmd.opts());
  } finally {
    for (const k of Object.keys(env)) if (!(k in saved)) delete process.env[k];
  }
}

test("signal thresholds: defaults, flags and env twins", () => {
  assert.deepEqual(parse([]), {
    lag: { lagWarnMs: 250, clockSkewWarnMs: 2000 },
    processWatch: { eventLoopWarnMs: 200, clockJumpWarnMs: 1000 },
    readiness: { streamTimeoutMs: 10_000 },
  });
  assert.deepEqual(
    parse([
      "--lag-warn-ms",
      "400",
      "--clock-skew-warn-ms",
      "0",
      "--event-loop-warn-ms",
      "50",
      "--ready-timeout-ms",
      "2500",
    ]),
    {
      lag: { lagWarnMs: 400, clockSkewWarnMs: 0 },
      processWatch: { eventLoopWarnMs: 50, clockJumpWarnMs: 1000 },
      readiness: { streamTimeoutMs: 2500 },
    },
  );
  const e = parse([], {
    KVSYNC_LAG_WARN_MS: "100",
    KVSYNC_CLOCK_SKEW_WARN_MS: "5000",
    KVSYNC_EVENT_LOOP_WARN_MS: "0",
    KVSYNC_CLOCK_JUMP_WARN_MS: "3000",
    KVSYNC_READY_TIMEOUT_MS: "0",
  });
  assert.deepEqual(e, {
    lag: { lagWarnMs: 100, clockSkewWarnMs: 5000 },
    processWatch: { eventLoopWarnMs: 0, clockJumpWarnMs: 3000 },
    readiness: { streamTimeoutMs: 0 },
  });
  assert.throws(() => parse(["--lag-warn-ms", "-1"]), /must be >= 0/);
});
