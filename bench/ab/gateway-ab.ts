/**
 * A/B of the gateway between two versions of src/ (what bench:gateway measures), in one run:
 *  - load: one set of mock engines (this tree's), a `kvsync gateway` of each side over them (both
 *    subscribed all along, so both apply every KV event), and the closed loop of bench:gateway
 *    over direct / base / head in interleaved rounds, the order reversed every other round;
 *  - routing decision time: bench:gateway's routing bench on each side's index and policy, in
 *    fresh processes alternating over rounds (index-ab.ts says why not in one process).
 * Printed: each side's req/s, p50, p99, CPU per request (the gateway process, idle CPU subtracted:
 * gateway-load.ts) and routing CPU p50 / p99; head / base of the totals and
 * the median of the per-round ratios (a round's two phases run back to back, so that ratio
 * suffers least from the machine's drift). Also written to bench/results/gateway-ab.json.
 *
 *   node --import tsx bench/ab/gateway-ab.ts [--base HEAD] [--head worktree] [--rounds 6]
 *        [--requests 18000] [--seconds 36] [--warmup 300] [--routing-rounds 4] [--decisions 2000]
 * (--routing-rounds 0: the load part only, for a change off the routing decision)
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  CONCURRENCY,
  cleanup,
  combine,
  log,
  measurePhases,
  REQUEST,
  round,
  startEngines,
  startGateway,
} from "../gateway-load.ts";
import type { RoutingFigures } from "../routing-decision.ts";
import { materialise, ROOT, spread } from "./sides.ts";

const { values: o } = parseArgs({
  options: {
    base: { type: "string", default: "HEAD" },
    /** names the result file: bench/results/gateway-ab-<label>.json */
    label: { type: "string" },
    head: { type: "string", default: "worktree" },
    rounds: { type: "string", default: "6" },
    requests: { type: "string", default: "18000" },
    seconds: { type: "string", default: "36" },
    "routing-rounds": { type: "string", default: "4" },
    decisions: { type: "string", default: "2000" },
    warmup: { type: "string", default: "300" },
  },
});
const ENGINES = 4;
const sides = [materialise("gateway", "base", o.base!), materialise("gateway", "head", o.head!)];
const cliOf = (dir: string) => join(dir, "src", "cli.ts");

async function load() {
  const fleet = await startEngines(join(ROOT, "src", "cli.ts"), ENGINES);
  const gws: Record<string, { url: string; pid: number }> = {};
  for (const s of sides) gws[s.name] = await startGateway(cliOf(s.dir), fleet);
  log(
    `  engines ${fleet.direct.join(" ")}; base ${gws.base!.url} (${o.base}); head ${gws.head!.url} (${o.head})`,
  );
  const rounds = Number(o.rounds);
  const phases = await measurePhases(
    [
      { name: "direct", origins: fleet.direct, pids: [] },
      { name: "base", origins: [gws.base!.url], pids: [gws.base!.pid] },
      { name: "head", origins: [gws.head!.url], pids: [gws.head!.pid] },
    ],
    {
      rounds,
      warmup: Number(o.warmup),
      maxRequests: Number(o.requests),
      maxMs: Number(o.seconds) * 1000,
      alternate: true,
    },
  );
  await cleanup();
  const res = {
    direct: combine(phases.get("direct")!),
    base: combine(phases.get("base")!),
    head: combine(phases.get("head")!),
  };
  const b = phases.get("base")!;
  const h = phases.get("head")!;
  const perRound = b.map((pb, k) => h[k]!.done / h[k]!.seconds / (pb.done / pb.seconds));
  return {
    ...res,
    headVsBase: {
      rps: round(res.head.rps / res.base.rps, 3),
      rpsPerRoundMedian: round(spread(perRound).median, 3),
      rpsPerRound: perRound.map((x) => round(x, 3)),
      p50: round(res.head.p50Ms / res.base.p50Ms, 3),
      p99: round(res.head.p99Ms / res.base.p99Ms, 3),
      cpuPerRequest:
        res.head.cpuUsPerRequest !== null && res.base.cpuUsPerRequest
          ? round(res.head.cpuUsPerRequest / res.base.cpuUsPerRequest, 3)
          : null,
    },
  };
}

function routing() {
  if (Number(o["routing-rounds"]) === 0) return null;
  const figures: Record<string, RoutingFigures[]> = { base: [], head: [] };
  const child = join(ROOT, "bench", "ab", "routing-ab-child.ts");
  for (let k = 0; k < Number(o["routing-rounds"]); k++) {
    for (const s of k % 2 === 0 ? sides : [...sides].reverse()) {
      const r = spawnSync(process.execPath, ["--import", "tsx", child, s.dir, o.decisions!], {
        cwd: ROOT,
        encoding: "utf8",
        maxBuffer: 1 << 26,
      });
      if (r.status !== 0) throw new Error(`routing ${s.name} (${s.rev}) failed:\n${r.stderr}`);
      const f = JSON.parse(r.stdout.trim().split("\n").pop()!) as RoutingFigures;
      figures[s.name]!.push(f);
      log(
        `  routing round ${k + 1} ${s.name}: CPU p50 ${f.cpuP50Us} µs, p99 ${f.cpuP99Us} µs; own cost p50 ` +
          `${f.workP50Us} µs, p99 ${f.workP99Us} µs; ${f.allocBytes} B/decision, ${f.gcDecisions} ran a GC`,
      );
    }
  }
  const sum = (fs: RoutingFigures[]) => ({
    cpuP50Us: spread(fs.map((f) => f.cpuP50Us)),
    cpuP99Us: spread(fs.map((f) => f.cpuP99Us)),
    workP50Us: spread(fs.map((f) => f.workP50Us)),
    workP99Us: spread(fs.map((f) => f.workP99Us)),
    allocBytes: spread(fs.map((f) => f.allocBytes)),
    gcDecisions: spread(fs.map((f) => f.gcDecisions)),
    avgMatchedBlocks: fs[0]!.avgMatchedBlocks,
  });
  const b = sum(figures.base!);
  const h = sum(figures.head!);
  return {
    base: b,
    head: h,
    headVsBase: {
      cpuP50: round(h.cpuP50Us.median / b.cpuP50Us.median, 3),
      cpuP99: round(h.cpuP99Us.median / b.cpuP99Us.median, 3),
      workP50: round(h.workP50Us.median / b.workP50Us.median, 3),
      workP99: round(h.workP99Us.median / b.workP99Us.median, 3),
      allocBytes: round(h.allocBytes.median / b.allocBytes.median, 3),
    },
  };
}

async function main(): Promise<void> {
  const started = Date.now();
  log(`gateway A/B: base ${o.base}, head ${o.head}; ${ENGINES} mock engines, concurrency ${CONCURRENCY}`);
  const l = await load();
  const r = routing();
  const out = {
    bench: "gateway-ab",
    base: o.base,
    head: o.head,
    node: process.version,
    request: REQUEST,
    concurrency: CONCURRENCY,
    rounds: Number(o.rounds),
    load: l,
    routingDecision: r,
    seconds: round((Date.now() - started) / 1000, 1),
  };
  log("");
  log("side      req/s   p50 ms   p99 ms   CPU us/req   routing CPU p50 / p99 µs (median of processes)");
  for (const n of ["direct", "base", "head"] as const) {
    const x = l[n];
    const rr = n === "direct" || r === null ? "" : `${r[n].cpuP50Us.median} / ${r[n].cpuP99Us.median}`;
    log(
      `${n.padEnd(8)} ${x.rps.toFixed(0).padStart(6)} ${x.p50Ms.toFixed(2).padStart(8)} ${x.p99Ms.toFixed(2).padStart(8)} ` +
        `${String(x.cpuUsPerRequest ?? "-").padStart(12)}   ${rr}`,
    );
  }
  log(
    `head / base: req/s ${l.headVsBase.rps} (per-round median ${l.headVsBase.rpsPerRoundMedian}), p50 ${l.headVsBase.p50}, ` +
      `p99 ${l.headVsBase.p99}, CPU per request ${l.headVsBase.cpuPerRequest}` +
      (r === null
        ? ""
        : `; routing CPU p50 ${r.headVsBase.cpuP50}, p99 ${r.headVsBase.cpuP99}, own cost p50 ` +
          `${r.headVsBase.workP50}, p99 ${r.headVsBase.workP99}, bytes/decision ${r.headVsBase.allocBytes}`) +
      " (latency: lower is better)",
  );
  const line = JSON.stringify(out);
  mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
  writeFileSync(
    join(ROOT, "bench", "results", `gateway-ab${o.label ? `-${o.label}` : ""}.json`),
    `${line}\n`,
  );
  process.stdout.write(`${line}\n`);
}

try {
  await main();
} catch (err) {
  log(`gateway A/B failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
