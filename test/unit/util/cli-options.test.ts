import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import { flagOpt } from "../../../src/util/cli-options.ts";

function parse(argv: string[], env: Record<string, string | undefined>, def = false): boolean {
  const saved = process.env.KVSYNC_TEST_FLAG;
  if (env.KVSYNC_TEST_FLAG === undefined) delete process.env.KVSYNC_TEST_FLAG;
  else process.env.KVSYNC_TEST_FLAG = env.KVSYNC_TEST_FLAG;
  try {
    const cmd = new Command().exitOverride().addOption(flagOpt("--flag", "a flag", "KVSYNC_TEST_FLAG", def));
    cmd.parse(argv, { from: "user" });
    return cmd.opts().flag as boolean;
  } finally {
    if (saved === undefined) delete process.env.KVSYNC_TEST_FLAG;
    else process.env.KVSYNC_TEST_FLAG = saved;
  }
}

test("flagOpt: default, bare flag, explicit value", () => {
  assert.equal(parse([], {}), false);
  assert.equal(parse([], {}, true), true);
  assert.equal(parse(["--flag"], {}), true);
  assert.equal(parse(["--flag", "false"], {}, true), false);
  assert.equal(parse(["--flag", "yes"], {}), true);
});

test("flagOpt: the env twin's value counts (commander's plain flags turn on for any value)", () => {
  for (const off of ["0", "false", "no", "off", "FALSE", ""])
    assert.equal(parse([], { KVSYNC_TEST_FLAG: off }, true), false, off);
  for (const on of ["1", "true", "yes", "on"]) assert.equal(parse([], { KVSYNC_TEST_FLAG: on }), true, on);
  assert.equal(parse(["--flag", "false"], { KVSYNC_TEST_FLAG: "1" }), false, "the flag wins over the env");
});
