#!/usr/bin/env node
// The `kvsync` binary: runs the build in dist/ (made by `npm install` through `prepare`).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const built = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
if (!existsSync(built)) {
  console.error("kvsync: dist/ is missing; run `npm run build` (npm install does it) first");
  process.exit(1);
}
await import(built);
