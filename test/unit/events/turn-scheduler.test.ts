import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { TurnScheduler, type TurnWorker } from "../../../src/events/turn-scheduler.ts";
import { waitFor } from "../../../src/util/wait.ts";

/** A stream with `work` reports queued; each report takes `costMs` of busy time. */
function worker(
  name: string,
  work: number,
  costMs: number,
  s: TurnScheduler,
  log: Array<[string, number, number]>,
) {
  const w = {
    name,
    work,
    budgets: [] as number[],
    applyMs: 2,
    share: 1,
    runTurn(budgetMs: number): boolean {
      w.budgets.push(budgetMs);
      log.push([name, s.turns, budgetMs]);
      const start = performance.now();
      do {
        const until = performance.now() + costMs;
        while (performance.now() < until) {}
        w.work--;
      } while (w.work > 0 && performance.now() - start < budgetMs);
      return w.work > 0;
    },
  } satisfies TurnWorker & Record<string, unknown>;
  return w;
}

describe("turn scheduler (one apply budget per event-loop turn for all streams)", () => {
  test("a flooding stream gets at most its share while a quiet one has work; the quiet one applies in the same turn", async () => {
    const s = new TurnScheduler();
    const runs: Array<[string, number, number]> = [];
    const flood = worker("flood", 1e9, 0.05, s, runs);
    const quiet = worker("quiet", 1, 0.05, s, runs);
    s.enqueue(flood);
    await waitFor("the flood applies", () => flood.budgets.length >= 3, 10_000);
    // alone, the flooder may take the whole turn
    assert.ok(flood.budgets.every((b) => b <= 2 + 1e-9));
    const turnAtEnqueue = s.turns;
    s.enqueue(quiet);
    await waitFor("the quiet stream applied", () => quiet.work === 0, 10_000);
    const q = runs.find((r) => r[0] === "quiet")!;
    assert.equal(q[1], turnAtEnqueue + 1, "its one report applied in the next turn");
    // that turn ran both; whichever went first had at most half of the budget
    const inTurn = runs.filter((r) => r[1] === q[1]);
    assert.deepEqual(inTurn.map((r) => r[0]).sort(), ["flood", "quiet"]);
    assert.ok(inTurn[0]![2] <= 1 + 1e-9, `first of the turn got ${inTurn[0]![2]} ms`);
    s.remove(flood);
    const n = flood.budgets.length;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(flood.budgets.length, n, "a removed stream does not run again");
  });

  test("the receive budget of a turn is shared by all read chains and renews every turn", async () => {
    const s = new TurnScheduler();
    assert.equal(s.chargeReceive(0.4, 1, 1), true);
    assert.equal(s.chargeReceive(0.7, 1, 1), false, "spent: wait for the next turn");
    await s.nextTurn();
    assert.equal(s.chargeReceive(0.4, 1, 1), true, "a new turn, a new budget");
  });

  test("with a share below 1, event work that used its share waits for a timer", async () => {
    const s = new TurnScheduler();
    // 40 ms of receive work at a 50 % share: the bucket (20 ms) is 20 ms short, 40 ms to refill
    assert.equal(s.chargeReceive(40, 100, 0.5), false);
    const t0 = performance.now();
    await s.nextTurn();
    assert.ok(performance.now() - t0 >= 30, `waited ${performance.now() - t0} ms`);
    assert.equal(s.delays, 1);
  });
});
