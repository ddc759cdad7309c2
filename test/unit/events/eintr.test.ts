import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { EINTR_ATTEMPTS, isEintr, retryOnEintr } from "../../../src/events/eintr.ts";

const here = dirname(fileURLToPath(import.meta.url));
const eintr = () => Object.assign(new Error("Interrupted system call"), { code: "EINTR", errno: 4 });

describe("EINTR at socket set-up", () => {
  it("retries an interrupted call, passes other errors, gives up after the attempts", () => {
    let calls = 0;
    const retried: number[] = [];
    const v = retryOnEintr(
      () => {
        if (++calls < 3) throw eintr();
        return "ok";
      },
      (a) => retried.push(a),
    );
    assert.equal(v, "ok");
    assert.deepEqual(retried, [1, 2]);

    calls = 0;
    const emfile = Object.assign(new Error("Too many open file descriptors"), { code: "EMFILE", errno: 24 });
    assert.throws(
      () =>
        retryOnEintr(() => {
          calls++;
          throw emfile;
        }),
      emfile,
    );
    assert.equal(calls, 1, "a non-EINTR error is not retried");

    calls = 0;
    assert.throws(
      () =>
        retryOnEintr(() => {
          calls++;
          throw eintr();
        }),
      (e) => isEintr(e),
    );
    assert.equal(calls, EINTR_ATTEMPTS);
    assert.equal(isEintr(new Error("x")), false);
    assert.equal(isEintr(null), false);
  });

  // Under the CPU profiler's SIGPROF, libzmq's zmq_socket_monitor (a SUB's `events`) fails with
  // EINTR a few times per thousand sockets here (seen ending a 1,000-pod gateway at start-up).
  it("2,000 SUB sockets open under --cpu-prof's SIGPROF without an error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-eintr-"));
    try {
      const out = await new Promise<string>((resolve, reject) => {
        execFile(
          process.execPath,
          [
            "--cpu-prof",
            `--cpu-prof-dir=${dir}`,
            "--cpu-prof-interval=10",
            "--import",
            "tsx",
            join(here, "eintr-child.ts"),
          ],
          { timeout: 120_000, env: { ...process.env, EINTR_ROUNDS: "10", EINTR_PER_ROUND: "200" } },
          (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
        );
      });
      const r = JSON.parse(out.trim().split("\n").pop()!) as {
        opened: number;
        eintrRetries: number;
        error: string | null;
      };
      assert.equal(r.error, null);
      assert.equal(r.opened, 2_000);
      process.stdout.write(`# eintr: ${r.eintrRetries} interrupted socket calls retried in 2,000 opens\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
