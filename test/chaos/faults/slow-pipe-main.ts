/**
 * The reader behind slow-pipe.ts (run as `node --import tsx slow-pipe-main.ts`):
 *   --fifo <path>      the FIFO to drain
 *   --out <path>       where the drained bytes go (appended: the writer's log file)
 *   --control <path>   unix socket, newline-delimited JSON: {"cmd":"set","delayMs":100,"probability":0.5}
 *                      (probability 0 = no delay), {"cmd":"stats"}
 * It reads the FIFO one read(2) at a time (at most one pipe-full); before each read, with
 * `probability`, it sleeps `delayMs`. While it sleeps the pipe fills and the writer's write(2)
 * blocks: the writer's IO is slow exactly as often and as long as the reader says.
 */
import { appendFileSync, closeSync, openSync, read, rmSync } from "node:fs";
import { createServer } from "node:net";

export interface SlowPipeStats {
  delayMs: number;
  probability: number;
  reads: number;
  delayedReads: number;
  bytes: number;
}

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i === -1 || !process.argv[i + 1]) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
}

const fifo = arg("fifo");
const out = arg("out");
const control = arg("control");
const stats: SlowPipeStats = { delayMs: 100, probability: 0, reads: 0, delayedReads: 0, bytes: 0 };
const buf = Buffer.alloc(1 << 16);
const fd = openSync(fifo, "r");
const outFd = openSync(out, "a");

function next(): void {
  const go = () =>
    read(fd, buf, 0, buf.length, null, (err, n) => {
      if (err || n === 0) {
        closeSync(outFd);
        process.exit(err ? 1 : 0);
      }
      stats.reads++;
      stats.bytes += n;
      appendFileSync(outFd, buf.subarray(0, n));
      next();
    });
  if (stats.probability > 0 && Math.random() < stats.probability) {
    stats.delayedReads++;
    setTimeout(go, stats.delayMs);
  } else go();
}
next();

rmSync(control, { force: true });
createServer((c) => {
  let text = "";
  c.on("error", () => {});
  c.on("data", (d) => {
    text += d.toString();
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n")) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      try {
        const cmd = JSON.parse(line) as { cmd: string; delayMs?: number; probability?: number };
        if (cmd.cmd === "set") {
          stats.delayMs = cmd.delayMs ?? stats.delayMs;
          stats.probability = cmd.probability ?? stats.probability;
        }
        c.write(`${JSON.stringify({ ok: true, stats })}\n`);
      } catch (err) {
        c.write(`${JSON.stringify({ ok: false, error: (err as Error).message })}\n`);
      }
    }
  });
}).listen(control, () => process.stdout.write(`slow pipe control ${control}\n`));
