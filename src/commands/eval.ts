import { writeFileSync } from "node:fs";
import { type Command, InvalidArgumentError } from "commander";
import { writeCharts } from "../eval/charts.ts";
import { evaluateLive, formatLiveTable } from "../eval/live.ts";
import { defaultThreads, evaluateParallel } from "../eval/parallel.ts";
import { describe, formatTable } from "../eval/report.ts";
import { buildWorkload, sweep, WORKLOAD_KINDS, type WorkloadKind, type WorkloadSpec } from "../eval/run.ts";
import { EVAL_POLICIES, type EvalPolicy, FLEET_DEFAULTS as F, type FleetOptions } from "../eval/simulator.ts";
import { flagOpt, opt, parseChoice, parseFloatArg, parseIntArg } from "../util/cli-options.ts";

function parsePolicies(v: string): EvalPolicy[] {
  const list = v
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);
  if (list.length === 0) throw new InvalidArgumentError("at least one policy");
  for (const p of list) {
    if (!(EVAL_POLICIES as readonly string[]).includes(p))
      throw new InvalidArgumentError(`unknown policy ${p} (expected ${EVAL_POLICIES.join(", ")})`);
  }
  return list as EvalPolicy[];
}

function parseLoads(v: string): number[] {
  const list = v.split(",").map((x) => Number(x.trim()));
  if (list.length === 0 || list.some((x) => !(x > 0)))
    throw new InvalidArgumentError(`not a list of loads > 0: ${v}`);
  return list;
}

const positive = (name: string) => (v: string) => {
  const n = parseFloatArg(v);
  if (!(n > 0)) throw new InvalidArgumentError(`${name} must be > 0`);
  return n;
};
const atLeast = (min: number) => (v: string) => {
  const n = parseIntArg(v);
  if (n < min) throw new InvalidArgumentError(`must be >= ${min}`);
  return n;
};

export function register(program: Command): void {
  program
    .command("eval")
    .description(
      "Routing quality: replay a workload (Mooncake trace or generator) against a modelled fleet, routed by the " +
        "real policies over the real index fed by the modelled engines' KV events; table, JSON and SVG charts",
    )
    .addOption(
      opt(
        "--trace <file>",
        "Mooncake JSONL trace (timestamp, input_length, output_length, hash_ids)",
        "KVSYNC_EVAL_TRACE",
      ),
    )
    .addOption(
      opt(
        "--workload <kind>",
        "trace, or a generator: shared-prefix (groups sharing a long prefix), multi-turn (chats re-sending the conversation)",
        "KVSYNC_EVAL_WORKLOAD",
        "trace",
      ).argParser(parseChoice(WORKLOAD_KINDS)),
    )
    .addOption(
      opt(
        "--requests <n>",
        "first n requests of the trace; requests a generator writes (default 4000)",
        "KVSYNC_EVAL_REQUESTS",
      ).argParser(atLeast(1)),
    )
    .addOption(
      opt("--pods <n>", "pods in the modelled fleet", "KVSYNC_EVAL_PODS", F.pods).argParser(atLeast(1)),
    )
    .addOption(
      opt(
        "--cache-blocks <n>",
        "KV cache per pod, in workload blocks",
        "KVSYNC_EVAL_CACHE_BLOCKS",
        F.cacheBlocks,
      ).argParser(atLeast(1)),
    )
    .addOption(
      opt(
        "--block-tokens <n>",
        "tokens per workload block (Mooncake: 512)",
        "KVSYNC_EVAL_BLOCK_TOKENS",
        F.blockTokens,
      ).argParser(atLeast(1)),
    )
    .addOption(
      opt(
        "--policies <list>",
        `comma-separated, of ${EVAL_POLICIES.join(", ")}`,
        "KVSYNC_EVAL_POLICIES",
        EVAL_POLICIES.join(","),
      ).argParser(parsePolicies),
    )
    .addOption(
      opt(
        "--time-scale <x>",
        "multiply arrival times (0.5 = twice the load)",
        "KVSYNC_EVAL_TIME_SCALE",
        1,
      ).argParser(positive("--time-scale")),
    )
    .addOption(
      opt(
        "--rate <rps>",
        "replace arrival times by Poisson arrivals at this many requests/s",
        "KVSYNC_EVAL_RATE",
      ).argParser(positive("--rate")),
    )
    .addOption(
      opt(
        "--event-lag-ms <ms>",
        "delay from an engine step to the index applying its KV events",
        "KVSYNC_EVAL_EVENT_LAG_MS",
        F.eventLagMs,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--max-running <n>",
        "engine: max running requests (max_num_seqs)",
        "KVSYNC_EVAL_MAX_RUNNING",
        F.maxRunning,
      ).argParser(atLeast(1)),
    )
    .addOption(
      opt(
        "--token-budget <n>",
        "engine: tokens per step (max_num_batched_tokens)",
        "KVSYNC_EVAL_TOKEN_BUDGET",
        F.tokenBudget,
      ).argParser(atLeast(1)),
    )
    .addOption(
      opt("--step-ms <ms>", "engine: fixed cost of a step", "KVSYNC_EVAL_STEP_MS", F.stepMs).argParser(
        parseFloatArg,
      ),
    )
    .addOption(
      opt(
        "--prefill-ms-per-token <ms>",
        "engine: cost of one uncached prompt token",
        "KVSYNC_EVAL_PREFILL_MS_PER_TOKEN",
        F.prefillMsPerToken,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--decode-ms-per-seq <ms>",
        "engine: cost per decoding sequence in a step",
        "KVSYNC_EVAL_DECODE_MS_PER_SEQ",
        F.decodeMsPerSeq,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--seed <n>",
        "seed of generators, Poisson arrivals and the random policy",
        "KVSYNC_EVAL_SEED",
        F.seed,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--overhead-ms <ms>",
        "request overhead outside the engine (network, gateway, client), half before admission, half after the " +
          "first token (--live measures it on the live fleet and gives the simulator that figure)",
        "KVSYNC_EVAL_OVERHEAD_MS",
        F.overheadMs,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--threads <n>",
        "worker threads simulating policies in parallel (default: one per policy, at most the cores; 1: in-process)",
        "KVSYNC_EVAL_THREADS",
      ).argParser(atLeast(1)),
    )
    .addOption(opt("--json <file>", "write the result as JSON", "KVSYNC_EVAL_JSON"))
    .addOption(
      opt(
        "--charts <dir>",
        "write SVG charts (hit rate and TTFT p90 against load, requests per pod)",
        "KVSYNC_EVAL_CHARTS",
      ),
    )
    .addOption(
      opt(
        "--loads <list>",
        "load factors of the charts' sweep (relative to the workload's rate)",
        "KVSYNC_EVAL_LOADS",
        "0.5,1,1.5,2",
      ).argParser(parseLoads),
    )
    .addOption(
      flagOpt(
        "--live",
        "replay the first --live-requests requests through real mock engines and the real gateway on loopback " +
          "(trace blocks become --block-tokens token blocks) and compare with the simulator on the same requests",
        "KVSYNC_EVAL_LIVE",
      ),
    )
    .addOption(
      opt(
        "--live-requests <n>",
        "requests of the live replay (the workload's first n)",
        "KVSYNC_EVAL_LIVE_REQUESTS",
        300,
      ).argParser(atLeast(1)),
    )
    .action(async (a: Record<string, unknown>) => {
      try {
        const policies = Array.isArray(a.policies)
          ? (a.policies as EvalPolicy[])
          : parsePolicies(String(a.policies));
        const loads = Array.isArray(a.loads) ? (a.loads as number[]) : parseLoads(String(a.loads));
        const kind = a.workload as WorkloadKind;
        if (kind === "trace" && a.trace === undefined)
          throw new Error("--trace <file> is required (or --workload shared-prefix|multi-turn)");
        const w: WorkloadSpec = {
          kind,
          trace: a.trace as string | undefined,
          requests: a.requests as number | undefined,
          seed: a.seed as number,
          timeScale: a.timeScale as number,
          rate: a.rate as number | undefined,
        };
        const fleet: FleetOptions = {
          pods: a.pods as number,
          cacheBlocks: a.cacheBlocks as number,
          blockTokens: a.blockTokens as number,
          eventLagMs: a.eventLagMs as number,
          maxRunning: a.maxRunning as number,
          tokenBudget: a.tokenBudget as number,
          stepMs: a.stepMs as number,
          prefillMsPerToken: a.prefillMsPerToken as number,
          decodeMsPerSeq: a.decodeMsPerSeq as number,
          seed: a.seed as number,
          overheadMs: a.overheadMs as number,
        };
        if (a.live === true) {
          const { reqs, source } = buildWorkload(w, fleet.blockTokens);
          const slice = reqs.slice(0, a.liveRequests as number);
          process.stderr.write(
            `live replay: ${slice.length} requests of ${source} on ${fleet.pods} mock engines ` +
              `(${fleet.cacheBlocks} blocks of ${fleet.blockTokens} tokens) behind the gateway\n`,
          );
          const r = await evaluateLive(slice, source, fleet, policies, {
            onResult: (l, s) =>
              process.stderr.write(
                `[${s.policy}] ${l ? `live hit ${(l.hitRate * 100).toFixed(1)} %, ` : ""}sim hit ${(s.hitRate * 100).toFixed(1)} %\n`,
              ),
          });
          process.stdout.write(`${formatLiveTable(r)}\n\n(${(r.wallMs / 1000).toFixed(1)} s)\n`);
          if (typeof a.json === "string") writeFileSync(a.json, `${JSON.stringify(r, null, 2)}\n`);
          process.exitCode = 0;
          return;
        }
        const r = await evaluateParallel(
          w,
          fleet,
          policies,
          (a.threads as number | undefined) ?? defaultThreads(policies.length),
        );
        process.stdout.write(`${describe(r)}\n\n${formatTable(r)}\n\n(${(r.wallMs / 1000).toFixed(1)} s)\n`);
        if (typeof a.json === "string") writeFileSync(a.json, `${JSON.stringify(r, null, 2)}\n`);
        if (typeof a.charts === "string") {
          const points = sweep(w, fleet, policies, loads);
          const files = await writeCharts(a.charts, r, points);
          process.stdout.write(`charts: ${files.join(", ")}\n`);
        }
        process.exitCode = 0;
      } catch (err) {
        process.stderr.write(`kvsync eval: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exitCode = 1;
      }
    });
}
