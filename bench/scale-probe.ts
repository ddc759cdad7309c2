/**
 * The scale benchmark's baseline for event lag (scale.bench.ts): a minimal consumer, one SUB
 * socket connected to a sample of the pods' PUB sockets, that decodes each batch and records
 * its lag (engine timestamp to decoded) and nothing else. On the same machine under the same
 * load, its p99 is what the machine alone adds; the gateway's lag above it is the gateway's own.
 *
 * IPC: parent → {report} → child {lag: {n, p50Ms, p99Ms, within50}} (and resets).
 */
import * as zmq from "zeromq";
import { decodeBatch } from "../src/protocol/decode.ts";

const ENDPOINTS = (process.env.SCALE_PROBE_ENDPOINTS ?? "").split(",").filter((e) => e !== "");
const CAP = 1 << 20;
const lags = new Float64Array(CAP);
let n = 0;

async function main(): Promise<void> {
  const sub = new zmq.Subscriber({ linger: 0, receiveHighWaterMark: 100_000 });
  for (const e of ENDPOINTS) sub.connect(e);
  sub.subscribe();
  process.on("message", (m: { report?: boolean }) => {
    if (m.report !== true) return;
    const got = Array.from(lags.subarray(0, Math.min(n, CAP))).sort((a, b) => a - b);
    const q = (p: number) => got[Math.min(got.length - 1, Math.floor(got.length * p))] ?? Number.NaN;
    process.send?.({
      lag: {
        n: got.length,
        p50Ms: q(0.5),
        p99Ms: q(0.99),
        within50: got.filter((x) => x <= 50).length / got.length,
      },
    });
    n = 0;
  });
  process.send?.({ ready: true });
  for await (const frames of sub) {
    const payload = frames[frames.length - 1];
    try {
      const { batch } = decodeBatch(payload);
      if (n < CAP) lags[n++] = Date.now() - batch.ts * 1000;
    } catch {
      // not a batch: nothing to time
    }
  }
}

void main().catch((err) => {
  process.stderr.write(`scale probe failed: ${String(err?.stack ?? err)}\n`);
  process.exit(1);
});
