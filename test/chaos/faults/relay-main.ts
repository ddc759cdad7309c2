/**
 * The TCP relay process behind relay.ts (run as `node --import tsx relay-main.ts`, inside the
 * pod's network namespace). Arguments:
 *   --control <unix socket path>            newline-delimited JSON commands (see `Command`)
 *   --route <name>=<listenHost>:<port>=<targetHost>:<port>   repeatable
 * Each accepted connection is paired with a fresh one to the target; bytes are relayed in both
 * directions through a queue per direction, so a change of mode never reorders bytes:
 * - passthrough: forwarded as they come;
 * - delay: each chunk is held `delayMs ± jitterMs` (uniform), released no earlier than the chunk
 *   before it (order preserved per direction, as a TCP stream needs), in the directions chosen;
 * - corrupt: each chunk of the chosen routes and directions, with `probability`, gets 1 to 3 of
 *   its bytes XORed with a random non-zero value.
 * "down" is target -> client (the pod's egress: what netem on the pod's interface delays), "up"
 * is client -> target. Each direction's queue is bounded (4 MB): past it the source is paused.
 */

import { rmSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";

type Direction = "up" | "down";
export type RelayMode =
  | { kind: "passthrough" }
  | { kind: "delay"; delayMs: number; jitterMs: number; directions: Direction[] }
  | { kind: "corrupt"; probability: number; routes: string[] | null; directions: Direction[] };
export type Command = { cmd: "set"; mode: RelayMode } | { cmd: "stats" } | { cmd: "reset" };
export interface RelayStats {
  mode: RelayMode;
  connections: number;
  open: number;
  chunks: Record<Direction, number>;
  bytes: Record<Direction, number>;
  delayedChunks: number;
  corruptedChunks: number;
  corruptedBytes: number;
}

const MAX_QUEUED = 4 << 20;

interface Route {
  name: string;
  listenHost: string;
  listenPort: number;
  targetHost: string;
  targetPort: number;
}

function parseArgs(argv: string[]): { control: string; routes: Route[] } {
  let control = "";
  const routes: Route[] = [];
  for (let i = 0; i < argv.length; i += 2) {
    if (argv[i] === "--control") control = argv[i + 1];
    else if (argv[i] === "--route") {
      const m = /^([\w-]+)=([\d.]+):(\d+)=([\d.]+):(\d+)$/.exec(argv[i + 1] ?? "");
      if (!m) throw new Error(`bad --route ${argv[i + 1]}`);
      routes.push({
        name: m[1],
        listenHost: m[2],
        listenPort: Number(m[3]),
        targetHost: m[4],
        targetPort: Number(m[5]),
      });
    } else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!control || routes.length === 0)
    throw new Error("usage: --control <path> --route <name>=<host:port>=<host:port>...");
  return { control, routes };
}

let mode: RelayMode = { kind: "passthrough" };
const stats: RelayStats = {
  mode,
  connections: 0,
  open: 0,
  chunks: { up: 0, down: 0 },
  bytes: { up: 0, down: 0 },
  delayedChunks: 0,
  corruptedChunks: 0,
  corruptedBytes: 0,
};
const sockets = new Set<Socket>();

function corrupt(chunk: Buffer): Buffer {
  const out = Buffer.from(chunk);
  const flips = Math.min(out.length, 1 + Math.floor(Math.random() * 3));
  for (let k = 0; k < flips; k++) {
    const i = Math.floor(Math.random() * out.length);
    out[i] ^= 1 + Math.floor(Math.random() * 255);
  }
  stats.corruptedChunks++;
  stats.corruptedBytes += flips;
  return out;
}

/** One direction of a relayed connection: from `src` to `dst`, in order, through a queue. */
function pipeDirection(route: Route, dir: Direction, src: Socket, dst: Socket): void {
  const queue: Array<{ at: number; data: Buffer }> = [];
  let queued = 0;
  let lastAt = 0;
  let timer: NodeJS.Timeout | null = null;
  let ended = false;
  const flush = () => {
    timer = null;
    const now = Date.now();
    while (queue.length && queue[0].at <= now) {
      const { data } = queue.shift()!;
      queued -= data.length;
      if (!dst.destroyed) dst.write(data);
    }
    if (queued < MAX_QUEUED && src.isPaused()) src.resume();
    if (queue.length) timer = setTimeout(flush, queue[0].at - now);
    else if (ended && !dst.destroyed) dst.end();
  };
  src.on("data", (chunk: Buffer) => {
    stats.chunks[dir]++;
    stats.bytes[dir] += chunk.length;
    let data = chunk;
    let at = Date.now();
    const m = mode;
    if (m.kind === "delay" && m.directions.includes(dir)) {
      at += m.delayMs + (Math.random() * 2 - 1) * m.jitterMs;
      stats.delayedChunks++;
    } else if (
      m.kind === "corrupt" &&
      m.directions.includes(dir) &&
      (m.routes === null || m.routes.includes(route.name)) &&
      Math.random() < m.probability
    ) {
      data = corrupt(chunk);
    }
    at = Math.max(at, lastAt);
    lastAt = at;
    // nothing held and nothing due later: forward at once. A timer per chunk would add a
    // millisecond or more to every chunk of the relayed pod, so passthrough would not be
    // transparent (the pod slower than its peers, throughput moving with its share of traffic)
    if (queue.length === 0 && timer === null && at <= Date.now()) {
      if (!dst.destroyed && !dst.write(data)) {
        src.pause();
        dst.once("drain", () => {
          if (queue.length === 0) src.resume();
        });
      }
      return;
    }
    queue.push({ at, data });
    queued += data.length;
    if (queued >= MAX_QUEUED) src.pause();
    if (!timer) timer = setTimeout(flush, Math.max(0, queue[0].at - Date.now()));
  });
  src.on("end", () => {
    ended = true;
    if (!timer) flush();
  });
}

function serve(route: Route): Server {
  const srv = createServer((client) => {
    stats.connections++;
    stats.open++;
    const upstream = createConnection({ host: route.targetHost, port: route.targetPort });
    const pair: Array<[Socket, Socket]> = [
      [client, upstream],
      [upstream, client],
    ];
    for (const [s, other] of pair) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on("error", () => {});
      // an end is relayed in order by pipeDirection; a reset resets the other side at once
      s.on("close", (hadError) => {
        sockets.delete(s);
        if (hadError) other.destroy();
      });
    }
    client.once("close", () => stats.open--);
    pipeDirection(route, "up", client, upstream);
    pipeDirection(route, "down", upstream, client);
  });
  srv.listen(route.listenPort, route.listenHost, () => {
    process.stdout.write(
      `relay ${route.name} ${route.listenHost}:${route.listenPort} -> ${route.targetHost}:${route.targetPort}\n`,
    );
  });
  return srv;
}

function main(): void {
  const { control, routes } = parseArgs(process.argv.slice(2));
  for (const r of routes) serve(r);
  rmSync(control, { force: true });
  const ctl = createServer((c) => {
    let buf = "";
    c.on("error", () => {});
    c.on("data", (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf("\n"); nl !== -1; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let reply: unknown;
        try {
          const cmd = JSON.parse(line) as Command;
          if (cmd.cmd === "set") {
            mode = cmd.mode;
            stats.mode = mode;
            process.stdout.write(`relay mode ${JSON.stringify(mode)}\n`);
            reply = { ok: true };
          } else if (cmd.cmd === "reset") {
            for (const s of sockets) s.destroy();
            reply = { ok: true };
          } else reply = { ok: true, stats };
        } catch (err) {
          reply = { ok: false, error: (err as Error).message };
        }
        c.write(`${JSON.stringify(reply)}\n`);
      }
    });
  });
  ctl.listen(control, () => process.stdout.write(`relay control ${control}\n`));
}

main();
