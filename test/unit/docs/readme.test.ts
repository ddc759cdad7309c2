import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { currentReference, renderReference } from "../../../scripts/cli-reference.ts";

const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");

test("README shows the two set-up commands", () => {
  assert.match(readme, /npm install && npm start/);
  assert.match(readme, /\bnpm test\b/);
});

test("README command reference equals the CLI's --help (every flag and env twin documented)", () => {
  const now = currentReference(readme);
  assert.ok(now, "README has no generated command reference block");
  assert.equal(now, renderReference(), "README.md is stale: run `npm run docs:cli`");
});
