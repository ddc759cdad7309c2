/**
 * One process of the gateway A/B's routing-decision part (gateway-ab.ts): loads one side's index,
 * routing policy and load tracker, runs bench:gateway's routing-decision bench on them and prints
 * one JSON line (CPU and wall p50 / p99 in µs). Not run by hand.
 *
 *   node --import tsx bench/ab/routing-ab-child.ts <side dir> <decisions>
 */
import { join } from "node:path";
import { routingBench } from "../routing-decision.ts";

const [dir, decisions] = process.argv.slice(2);
if (!dir || !decisions) {
  console.error("usage: node --import tsx routing-ab-child.ts <dir> <decisions>");
  process.exit(2);
}
const ix = (await import(join(dir, "src/index/index.ts"))) as typeof import("../../src/index/index.ts");
const routing = (await import(
  join(dir, "src/routing/index.ts")
)) as typeof import("../../src/routing/index.ts");
const proto = (await import(
  join(dir, "src/protocol/index.ts")
)) as typeof import("../../src/protocol/index.ts");
const r = routingBench(
  {
    createIndex: ix.createIndex,
    createPolicy: routing.createPolicy,
    LoadTracker: routing.LoadTracker,
    hashFromInt: proto.hashFromInt,
  },
  Number(decisions),
);
console.log(JSON.stringify(r));
