/**
 * Mock engines started in this process on loopback (ephemeral HTTP port and ZeroMQ endpoints),
 * each closed after the file's tests along with anything else pushed on `open`.
 */
import { after } from "node:test";
import { type RunningEngine, type StartOptions, startEngine } from "../../../src/engine/start.ts";
import { silentLogger } from "../../../src/util/log.ts";

/** Bind loopback on an ephemeral port (the engine reports which). */
export const LOCAL = "tcp://127.0.0.1:*";

/** What to close after the file's tests, last opened first. */
export const open: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});

/** An engine on loopback at speed 1000 (fast, deterministic steps), `o` on top; the caller closes it. */
export function startLocal(o: StartOptions = {}): Promise<RunningEngine> {
  return startEngine({
    host: "127.0.0.1",
    port: 0,
    eventsEndpoint: LOCAL,
    replayEndpoint: LOCAL,
    speed: 1000,
    log: silentLogger(),
    ...o,
  });
}

/** `startLocal`, closed after the file's tests. */
export async function start(o: StartOptions = {}): Promise<RunningEngine> {
  const e = await startLocal(o);
  open.push(e);
  return e;
}
