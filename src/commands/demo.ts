import { type Command, InvalidArgumentError } from "commander";
import { keepFleetUp } from "../demo/keep.ts";
import { formatTable } from "../demo/report.ts";
import { DEMO_DEFAULTS as D, type DemoOptions, demoLogger, runDemo } from "../demo/run.ts";
import { isPolicyName } from "../routing/index.ts";
import { POLICY_NAMES, type PolicyName } from "../routing/types.ts";
import { flagOpt, opt, parseFloatArg, parseIntArg } from "../util/cli-options.ts";
import { freePort } from "../util/free-port.ts";

function parsePolicies(v: string): PolicyName[] {
  const list = v
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);
  if (list.length === 0) throw new InvalidArgumentError("at least one policy");
  for (const p of list) {
    if (!isPolicyName(p))
      throw new InvalidArgumentError(`unknown policy ${p} (expected ${POLICY_NAMES.join(", ")})`);
  }
  return list as PolicyName[];
}

export function register(program: Command): void {
  program
    .command("demo")
    .description(
      "Local demo fleet (mock engines + the gateway on loopback): a multi-turn chat workload with shared " +
        "system prompts, run once per policy on fresh engines, ends with a comparison table",
    )
    .addOption(
      opt("--requests <n>", "requests (chat turns) per policy", "KVSYNC_DEMO_REQUESTS", D.requests).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt("--concurrency <n>", "conversations in flight", "KVSYNC_DEMO_CONCURRENCY", D.concurrency).argParser(
        parseIntArg,
      ),
    )
    .addOption(opt("--seed <n>", "workload seed", "KVSYNC_DEMO_SEED", D.seed).argParser(parseIntArg))
    .addOption(
      opt("--engines <n>", "mock engines in the fleet", "KVSYNC_DEMO_ENGINES", D.engines).argParser(
        parseIntArg,
      ),
    )
    .addOption(
      opt(
        "--policies <list>",
        "comma-separated routing policies to compare",
        "KVSYNC_DEMO_POLICIES",
        D.policies.join(","),
      ).argParser(parsePolicies),
    )
    .addOption(
      opt(
        "--speed <x>",
        "engine timing speed-up (higher = faster run, less realistic queueing)",
        "KVSYNC_DEMO_SPEED",
        D.speed,
      ).argParser(parseFloatArg),
    )
    .addOption(
      opt(
        "--gpu-blocks <n>",
        "GPU KV blocks per engine (16 tokens each)",
        "KVSYNC_DEMO_GPU_BLOCKS",
        D.gpuBlocks,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--progress-every <n>",
        "progress line every n requests (default: requests/10; 0 = none)",
        "KVSYNC_DEMO_PROGRESS_EVERY",
      ).argParser(parseIntArg),
    )
    .addOption(flagOpt("--json", "also print the result as JSON", "KVSYNC_DEMO_JSON"))
    .addOption(
      opt(
        "--keep <seconds>",
        "after the comparison, keep a fleet up this long under light traffic for the dashboard (0 = exit)",
        "KVSYNC_DEMO_KEEP",
        300,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--dashboard-port <n>",
        "the dashboard's port on 127.0.0.1 (the gateway's admin API; 0 = a free one)",
        "KVSYNC_DEMO_DASHBOARD_PORT",
        0,
      ).argParser(parseIntArg),
    )
    .action(async (a: Record<string, unknown>) => {
      const requests = a.requests as number;
      const policiesRaw = a.policies;
      const policies = Array.isArray(policiesRaw)
        ? (policiesRaw as PolicyName[])
        : parsePolicies(String(policiesRaw));
      const ac = new AbortController();
      const stop = () => {
        process.stderr.write("kvsync demo: stopping (requests in flight finish, then cleanup)\n");
        ac.abort();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      try {
        const port = (a.dashboardPort as number) || (await freePort());
        const progress = (l: string) => process.stderr.write(`${l}\n`);
        progress(`dashboard: http://127.0.0.1:${port}/  (live while the demo runs)`);
        const o: Partial<DemoOptions> = {
          signal: ac.signal,
          requests,
          concurrency: a.concurrency as number,
          seed: a.seed as number,
          engines: a.engines as number,
          policies,
          speed: a.speed as number,
          gpuBlocks: a.gpuBlocks as number,
          progressEvery: (a.progressEvery as number | undefined) ?? Math.max(1, Math.round(requests / 10)),
          adminPort: port,
          progress,
        };
        const r = await runDemo(o);
        const ro = r.options;
        process.stdout.write(
          `\n${r.model} on ${ro.engines} mock engines (${ro.gpuBlocks} GPU blocks each, speed ${ro.speed}), ` +
            `${ro.requests} requests/policy: ${ro.conversations} conversations of ${ro.tenants} tenants, ` +
            `concurrency ${ro.concurrency}, seed ${ro.seed}\n\n${formatTable(r.results)}\n`,
        );
        if (a.json === true) process.stdout.write(`${JSON.stringify(r)}\n`);
        const keep = a.keep as number;
        // Ctrl-C while the fleet is kept up ends a finished demo: not an interruption
        const keeping = keep > 0 && !ac.signal.aborted;
        if (keeping) {
          progress(`\ndashboard: http://127.0.0.1:${port}/`);
          await keepFleetUp({ ...D, ...o } as DemoOptions, policies[0], keep, demoLogger(), progress);
          progress("[keep] done");
        }
        if (ac.signal.aborted && !keeping) {
          process.stderr.write("kvsync demo: interrupted, the table covers the requests sent until then\n");
          process.exitCode = 130;
        } else process.exitCode = r.results.some((x) => x.requests === 0) ? 1 : 0;
      } catch (err) {
        process.stderr.write(`kvsync demo: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exitCode = 1;
      } finally {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
      }
    });
}
