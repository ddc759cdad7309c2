/**
 * Screenshots of the dashboard on a running demo, for docs/ and the README:
 *   node --import tsx scripts/dashboard-screenshot.ts [outDir=docs]
 * Starts `kvsync demo` (a short comparison, then the kept fleet), waits for the kept kv-aware
 * fleet to have a few seconds of routing history, and shoots the page with Debian's chromium
 * (KVSYNC_CHROMIUM overrides the path) through playwright-core.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const outDir = process.argv[2] ?? "docs";
const cli = fileURLToPath(new URL("../src/cli.ts", import.meta.url));
const child = spawn(
  process.execPath,
  ["--import", "tsx", cli, "demo", "--requests", "200", "--keep", "90", "--progress-every", "0"],
  { stdio: ["ignore", "inherit", "pipe"] },
);
let err = "";
const ready = new Promise<string>((resolve, reject) => {
  child.stderr.on("data", (d: Buffer) => {
    process.stderr.write(d);
    err += d;
    const url = /dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(err)?.[1];
    if (url && err.includes("[keep] kv-aware fleet up")) resolve(url);
  });
  child.on("exit", (code) => reject(new Error(`demo exited (${code}) before the kept fleet was up`)));
});

const browser = await chromium.launch({ executablePath: process.env.KVSYNC_CHROMIUM ?? "/usr/bin/chromium" });
try {
  const url = await ready;
  const page = await browser.newPage({ viewport: { width: 1440, height: 1200 }, deviceScaleFactor: 1 });
  await page.goto(url);
  // a few seconds of routing history in the charts
  await new Promise((r) => setTimeout(r, 25_000));
  await page.screenshot({ path: join(outDir, "dashboard.png"), fullPage: true });
  await page.click("#decisions details.decision summary");
  await (await page.$("#routing"))?.screenshot({ path: join(outDir, "dashboard-routing.png") });
  process.stderr.write(`screenshots in ${outDir}/\n`);
} finally {
  await browser.close();
  child.kill("SIGINT");
}
