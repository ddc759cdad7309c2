/**
 * Child of eintr.test.ts, run under `--cpu-prof` with a short sampling interval: opens SUB
 * sockets (src/events/sub-socket.ts) in rounds while SIGPROF lands every few microseconds of
 * CPU, and prints {opened, eintrRetries, error} as one JSON line.
 */
import { SubSocket } from "../../../src/events/sub-socket.ts";
import { silentLogger } from "../../../src/util/log.ts";

const ROUNDS = Number(process.env.EINTR_ROUNDS ?? 5);
const PER_ROUND = Number(process.env.EINTR_PER_ROUND ?? 200);
const opts = {
  reconnectMs: 1000,
  reconnectMaxMs: 5000,
  receiveHighWaterMark: 1000,
  heartbeatIntervalMs: 1000,
  heartbeatTimeoutMs: 3000,
  connectTimeoutMs: 1000,
  watchdogMs: 60_000,
  retryGraceMs: 10_000,
  maxFrameBytes: 1 << 20,
};
const handlers = { up() {}, down() {}, frames: () => undefined };
let opened = 0;
let eintrRetries = 0;
let error: string | null = null;
try {
  for (let r = 0; r < ROUNDS; r++) {
    const socks: SubSocket[] = [];
    for (let i = 0; i < PER_ROUND; i++) {
      // nothing listens on port 9 (discard) here: the socket keeps trying, it never connects
      const s = new SubSocket("tcp://127.0.0.1:9", "", opts, handlers, silentLogger(), () => ({}));
      s.start();
      socks.push(s);
      opened++;
    }
    for (const s of socks) eintrRetries += s.eintrRetries;
    await Promise.all(socks.map((s) => s.close()));
  }
} catch (err) {
  error = String((err as Error)?.stack ?? err);
}
process.stdout.write(`${JSON.stringify({ opened, eintrRetries, error })}\n`);
process.exit(0);
