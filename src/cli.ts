#!/usr/bin/env node
import { Command } from "commander";

// One binary, one file per sub-command under src/commands/.
const program = new Command()
  .name("kvsync")
  .description("KV-cache-aware routing for vLLM fleets")
  .version("0.1.0")
  .showHelpAfterError();

const commands: Array<() => Promise<{ register(p: Command): void }>> = [
  // sub-command modules are listed here, one line each
  () => import("./commands/mock-engine.ts"),
  () => import("./commands/events.ts"),
  () => import("./commands/index.ts"),
  () => import("./commands/gateway.ts"),
  () => import("./commands/demo.ts"),
  () => import("./commands/eval.ts"),
];
for (const load of commands) (await load()).register(program);

await program.parseAsync(process.argv);
