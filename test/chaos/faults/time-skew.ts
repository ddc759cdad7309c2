/**
 * Time skew: a process's wall clock runs `offsetSeconds` (+30 s) ahead, as a node with a broken
 * NTP sync (Chaos Mesh: TimeChaos, which shifts CLOCK_REALTIME only by default).
 *
 * How: libfaketime, preloaded into the process from its start (`env()` goes into the engine's
 * `EngineOptions.env` or the gateway's `GatewayOptions.env`). It reads its offset from a file
 * (FAKETIME_TIMESTAMP_FILE, re-read at most once a second with FAKETIME_CACHE_DURATION=1), so
 * the process starts with "+0" (no skew, same binary path as skewed) and apply/remove only
 * rewrite the file: no restart, which would be a pod-kill fault of its own.
 * DONT_FAKE_MONOTONIC=1 keeps CLOCK_MONOTONIC real: a skewed node's monotonic clock is not
 * skewed, and Node's timers (libuv) run on it; a monotonic jump of 30 s would fire every pending
 * timer at once on apply and freeze them for 30 s on remove, a different fault.
 *
 * Verify: the target's HTTP `Date` header (Node stamps it from the wall clock) is ~offset ahead
 * of the test's clock. Remove: write "+0" back (effective within ~1 s).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { scaled, waitFor } from "../../e2e/harness/wait.ts";
import { type Fault, FaultNotInEffect } from "./fault.ts";

export const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

export interface SkewEvidence {
  /** target's Date header minus the test's clock, seconds (Date has 1 s resolution) */
  aheadSeconds: number;
}

export class TimeSkew implements Fault<SkewEvidence> {
  readonly name: string;
  private readonly dir: string;
  private readonly file: string;
  private applied = false;
  private readonly unregister: () => void;

  /**
   * An HTTP URL of the skewed process (e.g. an engine's /health) for `verify`; set it once the
   * process started with `env()` is up.
   */
  probeUrl: string | null = null;

  constructor(readonly offsetSeconds = 30) {
    this.name = `time skew +${offsetSeconds}s`;
    this.dir = mkdtempSync(join(tmpdir(), "kvsync-faketime-"));
    this.file = join(this.dir, "offset");
    writeFileSync(this.file, "+0\n");
    this.unregister = registerCleanup({
      label: `${this.name} (${this.file})`,
      sync: () => rmSync(this.dir, { recursive: true, force: true }),
    });
  }

  /** Environment that puts a process under this skewable clock; give it at the process's start. */
  env(): Record<string, string> {
    return {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: this.file,
      FAKETIME_CACHE_DURATION: "1",
      DONT_FAKE_MONOTONIC: "1",
    };
  }

  get active(): boolean {
    return this.applied;
  }

  async apply(): Promise<void> {
    writeFileSync(this.file, `+${this.offsetSeconds}s\n`);
    this.applied = true;
  }

  /** Seconds the target's Date header is ahead of this process's clock. */
  async measure(): Promise<number> {
    if (!this.probeUrl) throw new Error(`${this.name}: no probeUrl set`);
    const before = Date.now();
    const r = await fetch(this.probeUrl, { signal: AbortSignal.timeout(5000) });
    await r.arrayBuffer();
    const after = Date.now();
    const date = r.headers.get("date");
    if (!date) throw new Error(`${this.probeUrl} sent no Date header`);
    // the header truncates to the second: compare with the midpoint of the request
    return (Date.parse(date) + 500 - (before + after) / 2) / 1000;
  }

  async verify(): Promise<SkewEvidence> {
    if (!this.applied) throw new FaultNotInEffect(this.name, "not applied");
    let ahead = 0;
    // libfaketime re-reads the offset file at most once per second
    await waitFor(
      `${this.probeUrl} clock ${this.offsetSeconds}s ahead`,
      async () => {
        ahead = await this.measure();
        return Math.abs(ahead - this.offsetSeconds) <= 2 ? true : `ahead ${ahead.toFixed(1)}s`;
      },
      { timeoutMs: scaled(5000), intervalMs: 250 },
    ).catch((err: Error) => {
      throw new FaultNotInEffect(this.name, err.message);
    });
    return { aheadSeconds: ahead };
  }

  async remove(): Promise<void> {
    writeFileSync(this.file, "+0\n");
    this.applied = false;
  }

  /** Remove the offset file (after the skewed processes are gone). */
  dispose(): void {
    this.unregister();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
