import type { Pod } from "../../e2e/harness/cluster.ts";
import type { Fault as Injector } from "../faults/fault.ts";
import type { Fault } from "./experiment.ts";

/**
 * An injector of test/chaos/faults/ (its verify() resolves with evidence or rejects) as the
 * experiment's fault (verify() polled until true). The last evidence is kept for the report.
 */
export function experimentFault(
  injector: Injector,
  affected: Pod[],
  hooks: { afterRemove?: () => Promise<void>; pods?: () => Pod[]; servesHttp?: boolean } = {},
): Fault & { evidence: unknown } {
  const f = {
    affected,
    evidence: null as unknown,
    apply: () => injector.apply(),
    async verify(): Promise<true | string> {
      try {
        f.evidence = await injector.verify();
        return true;
      } catch (err) {
        return (err as Error).message;
      }
    },
    async remove() {
      await injector.remove();
      await hooks.afterRemove?.();
    },
    pods: hooks.pods,
    servesHttp: hooks.servesHttp,
  };
  return f;
}
