/**
 * nftables tables inside a pod's network namespace: the mechanism of the partition, port-block
 * and packet-loss faults.
 *
 * Why tables in the pod's namespace: each namespace has its own nftables ruleset, so a fault's
 * rules touch nothing else on the machine, several faults can coexist (one table each, own
 * name), and removing a fault is deleting its table (or the namespace, which takes every table
 * with it). A table is loaded atomically with `nft -f` (the `table X {}; delete table X` prefix
 * makes the load idempotent), and registered with the harness cleanup until deleted.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { run, runSyncQuiet } from "../../../harness/proc.ts";

export type NftFamily = "ip" | "inet" | "netdev";

export class NftTable {
  private unregister: (() => void) | null = null;

  constructor(
    readonly ns: string,
    readonly family: NftFamily,
    readonly name: string,
  ) {}

  get loaded(): boolean {
    return this.unregister !== null;
  }

  /** Replace the table's contents with `body` (the text between the table's braces). */
  async load(body: string): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-nft-"));
    const file = join(dir, `${this.name}.nft`);
    const id = `${this.family} ${this.name}`;
    writeFileSync(file, `table ${id} {}\ndelete table ${id}\ntable ${id} {\n${body}\n}\n`);
    try {
      this.unregister ??= registerCleanup({
        label: `nft table ${id} in ${this.ns}`,
        sync: () => this.deleteSync(),
      });
      await run("ip", ["netns", "exec", this.ns, "nft", "-f", file]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Delete the table; harmless when it (or its namespace) is gone already. */
  async delete(): Promise<void> {
    this.unregister?.();
    this.unregister = null;
    await run("ip", ["netns", "exec", this.ns, "nft", "delete", "table", this.family, this.name]).catch(
      (err: Error) => {
        if (!/No such file|does not exist|Cannot open network namespace/i.test(err.message)) throw err;
      },
    );
  }

  private deleteSync(): void {
    runSyncQuiet("ip", ["netns", "exec", this.ns, "nft", "delete", "table", this.family, this.name]);
  }

  /** The table's ruleset as nft prints it (with counters), or null when absent. */
  async list(): Promise<string | null> {
    try {
      return await run("ip", ["netns", "exec", this.ns, "nft", "list", "table", this.family, this.name]);
    } catch {
      return null;
    }
  }

  /** Packets counted by each `counter` whose rule carries `comment "<name>"`. */
  async counters(): Promise<Record<string, number>> {
    const text = (await this.list()) ?? "";
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/counter packets (\d+) bytes \d+.*comment "([^"]+)"/g))
      out[m[2]] = Number(m[1]);
    return out;
  }
}
