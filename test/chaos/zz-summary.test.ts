import { it } from "node:test";
import { loadRun, printTable } from "./harness/results.ts";

// Runs last (files run in name order, one at a time): the results of every experiment of this
// run, from the run folder the experiment files wrote to.
it("chaos results table of this run", () => {
  const rows = loadRun();
  printTable(
    `chaos results: ${rows.length} experiment(s); recovery bound 30 s asserted, targets reported`,
    rows,
  );
});
