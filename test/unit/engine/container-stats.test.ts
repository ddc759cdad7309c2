/**
 * The engine's container figures (engine/container-stats.ts): PSI `some` totals in seconds, the
 * process's own cgroups found from /proc/self/cgroup, a process in the root cgroup reports none.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ownCgroups, parsePressureTotal } from "../../../src/engine/container-stats.ts";

describe("engine container stats", () => {
  it("reads the some line's total as seconds", () => {
    const psi =
      "some avg10=26.29 avg60=5.03 avg300=1.06 total=3160449\nfull avg10=16.29 avg60=3.13 avg300=0.66 total=1994935\n";
    assert.equal(parsePressureTotal(psi), 3.160449);
    assert.equal(parsePressureTotal("garbage"), undefined);
  });

  it("a process in the root cgroups is in no container", () => {
    assert.deepEqual(ownCgroups("4:memory:/\n1:cpu:/\n0::/\n"), { v2: null, memoryV1: null });
  });

  it("finds a non-root v2 cgroup when the kernel mounts cgroup2", () => {
    const cg = ownCgroups("0::/kvsync-test\n");
    // the path depends on the mount (here /sys/fs/cgroup/unified or /sys/fs/cgroup), when any
    if (cg.v2 !== null) assert.match(cg.v2, /\/kvsync-test$/);
  });
});
