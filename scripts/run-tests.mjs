#!/usr/bin/env node
// Runs Node's built-in test runner over every *.test.ts below the given folders, or the given
// test files (Node 20's `--test` takes no globs). Extra args after `--` go to node (e.g. --test-name-pattern).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const sep = process.argv.indexOf("--");
const dirs = process.argv.slice(2, sep === -1 ? undefined : sep);
const extra = sep === -1 ? [] : process.argv.slice(sep + 1);
const files = [];
const walk = (d) => {
  for (const name of readdirSync(d).sort()) {
    const p = join(d, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".test.ts")) files.push(p);
  }
};
for (const d of dirs) {
  if (statSync(d).isDirectory()) walk(d);
  else files.push(d);
}
if (files.length === 0) {
  console.error(`no test files under ${dirs.join(", ")}`);
  process.exit(1);
}
const concurrency = process.env.KVSYNC_TEST_CONCURRENCY ?? "1";
const r = spawnSync(
  process.execPath,
  [
    "--import",
    "tsx",
    "--import",
    pathToFileURL(
      join(dirname(fileURLToPath(import.meta.url)), "..", "test", "helpers", "fast-check-setup.ts"),
    ).href,
    "--test",
    `--test-concurrency=${concurrency}`,
    ...extra,
    ...files,
  ],
  { stdio: "inherit" },
);
process.exit(r.status ?? 1);
