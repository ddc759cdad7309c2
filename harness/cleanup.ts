/**
 * Process-wide registry of cleanup actions for everything the E2E harness creates (network
 * namespaces, links, child process groups). Actions run in reverse order of registration:
 * - from test hooks (`runCleanups()`, async: graceful stops first), and
 * - synchronously on process 'exit', SIGINT, SIGTERM, SIGHUP and uncaught errors, so an
 *   interrupted or crashed test leaves nothing behind.
 * A sync action must not throw; failures are collected and printed.
 */
export interface CleanupAction {
  label: string;
  /** graceful async variant, used from hooks; falls back to `sync` */
  async?: () => Promise<void>;
  /** last-resort variant, safe to call from an 'exit' handler */
  sync: () => void;
}

const actions: CleanupAction[] = [];
let handlersInstalled = false;

export function registerCleanup(action: CleanupAction): () => void {
  installHandlers();
  actions.push(action);
  return () => {
    const i = actions.indexOf(action);
    if (i !== -1) actions.splice(i, 1);
  };
}

/** Run (and forget) every registered action, newest first. Returns the errors met. */
export async function runCleanups(): Promise<string[]> {
  const errors: string[] = [];
  while (actions.length > 0) {
    const a = actions.pop()!;
    try {
      if (a.async) await a.async();
      else a.sync();
    } catch (err) {
      errors.push(`${a.label}: ${(err as Error).message}`);
      try {
        a.sync();
      } catch (err2) {
        errors.push(`${a.label} (sync): ${(err2 as Error).message}`);
      }
    }
  }
  return errors;
}

export function runCleanupsSync(): void {
  while (actions.length > 0) {
    const a = actions.pop()!;
    try {
      a.sync();
    } catch (err) {
      process.stderr.write(`e2e cleanup ${a.label} failed: ${(err as Error).message}\n`);
    }
  }
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", runCleanupsSync);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      process.stderr.write(`e2e: ${sig} received, cleaning up namespaces and processes\n`);
      runCleanupsSync();
      process.exit(sig === "SIGINT" ? 130 : 143);
    });
  }
}
