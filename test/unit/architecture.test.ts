/**
 * Size of src/ files: one reason to change per file keeps each under ~500 lines. The one exception
 * is the index's hot core (src/index/sync-index.ts), whose top comment says why it stays whole.
 * The import layering of src/ is checked by dependency-cruiser (`npm run lint:arch`).
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const MAX_LINES = 500;
const EXCEPTIONS = new Set(["src/index/sync-index.ts"]);

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const p = join(dir, d.name);
    if (d.isDirectory()) return sources(p);
    return d.name.endsWith(".ts") ? [relative(ROOT, p)] : [];
  });
}

const lineCount = (file: string) => readFileSync(join(ROOT, file), "utf8").split("\n").length - 1;

test(`no file in src/ is over ${MAX_LINES} lines (except the index's hot core)`, () => {
  const over = sources(join(ROOT, "src"))
    .filter((f) => !EXCEPTIONS.has(f))
    .map((f) => ({ f, n: lineCount(f) }))
    .filter(({ n }) => n > MAX_LINES)
    .map(({ f, n }) => `${f}: ${n} lines`);
  assert.deepEqual(over, [], "split these files by reason to change");
});

test("the exception explains its size at its top", () => {
  for (const f of EXCEPTIONS) {
    const head = readFileSync(join(ROOT, f), "utf8").slice(0, 6000);
    assert.match(head, /one file/i, `${f} does not say at its top why it stays one file`);
  }
});
