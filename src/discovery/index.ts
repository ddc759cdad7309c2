import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type { Registry } from "prom-client";
import { collect, opt, parseIntArg } from "../util/cli-options.ts";
import type { Logger } from "../util/log.ts";
import { DISCOVERY_SLOW_DEFAULT_MS } from "./api-timing.ts";
import { StaticFileSource } from "./static-file.ts";
import type { DiscoverySource } from "./types.ts";

export type { PodChange, PodSetListener } from "./pod-set.ts";
export { PodSet } from "./pod-set.ts";
export { EnginesFileError, loadEnginesFile, parseEnginesFile, StaticFileSource } from "./static-file.ts";
export type { DiscoveryEvent, DiscoverySource, PodInfo } from "./types.ts";

export const DEFAULT_LABEL_SELECTOR = "model.aibrix.ai/kv-events-enabled=true";

export interface DiscoveryOptions {
  /** "static" (engines file) or "kubernetes"; default: static when `engines` is set */
  discovery?: "static" | "kubernetes";
  /** engines file for the static source */
  engines?: string;
  /** Kubernetes namespaces to watch; empty or absent = all namespaces */
  namespaces?: string[];
  /** label selector for engine pods; default `model.aibrix.ai/kv-events-enabled=true` */
  labelSelector?: string;
  /** kubeconfig path; default: in-cluster credentials if present, else $KUBECONFIG / ~/.kube/config */
  kubeconfig?: string;
  /** static source: debounce of file changes (ms) */
  debounceMs?: number;
  /** kubernetes source: full relist period (ms), 0 = never */
  resyncMs?: number;
  /** kubernetes source: an API request slower than this is logged as `discovery.slow` (ms, 0 = off) */
  slowRequestMs?: number;
  registry?: Registry;
  logger?: Logger;
}

/** Build the discovery source the options ask for (`--discovery static|kubernetes`, `--engines`). */
export async function createDiscoverySource(opts: DiscoveryOptions): Promise<DiscoverySource> {
  const kind = opts.discovery ?? (opts.engines ? "static" : undefined);
  if (kind === "static") {
    if (!opts.engines) throw new Error("--discovery static needs --engines <file>");
    return new StaticFileSource({
      file: opts.engines,
      debounceMs: opts.debounceMs,
      registry: opts.registry,
      logger: opts.logger,
    });
  }
  if (kind === "kubernetes") {
    const { KubernetesSource } = await import("./kubernetes.ts");
    return new KubernetesSource({
      namespaces: opts.namespaces,
      labelSelector: opts.labelSelector ?? DEFAULT_LABEL_SELECTOR,
      kubeconfig: opts.kubeconfig,
      resyncMs: opts.resyncMs,
      slowRequestMs: opts.slowRequestMs,
      registry: opts.registry,
      logger: opts.logger,
    });
  }
  throw new Error("no discovery configured: pass --engines <file> or --discovery kubernetes");
}

function parseDiscoveryKind(v: string): "static" | "kubernetes" {
  if (v === "static" || v === "kubernetes") return v;
  throw new InvalidArgumentError(`expected static or kubernetes, got ${v}`);
}

function splitList(v: string, prev: string[] | undefined): string[] {
  return collect(v, prev).flatMap((s) =>
    s
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x !== ""),
  );
}

/**
 * Add the discovery flags to a sub-command: `--discovery`, `--engines`, `--namespace` (repeatable
 * or comma-separated), `--label-selector`, `--kubeconfig`. Read them back with
 * `discoveryOptionsFrom(cmd.opts())`.
 */
export function addDiscoveryOptions(cmd: Command): Command {
  return cmd
    .addOption(
      opt("--discovery <kind>", "engine discovery: static | kubernetes", "KVSYNC_DISCOVERY").argParser(
        parseDiscoveryKind,
      ),
    )
    .addOption(opt("--engines <file>", "engines file (JSON/YAML), watched", "KVSYNC_ENGINES"))
    .addOption(
      opt(
        "--namespace <ns>",
        "Kubernetes namespace to watch (repeatable or comma-separated; default all)",
        "KVSYNC_NAMESPACE",
      ).argParser(splitList),
    )
    .addOption(
      opt(
        "--label-selector <sel>",
        "label selector of engine pods",
        "KVSYNC_LABEL_SELECTOR",
        DEFAULT_LABEL_SELECTOR,
      ),
    )
    .addOption(
      opt(
        "--kubeconfig <path>",
        "kubeconfig file (default: in-cluster, then $KUBECONFIG)",
        "KVSYNC_KUBECONFIG",
      ),
    )
    .addOption(
      opt(
        "--resync-seconds <n>",
        "Kubernetes full relist period (0 = off)",
        "KVSYNC_RESYNC_SECONDS",
        300,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--discovery-slow-ms <ms>",
        "a Kubernetes list, or a watch's response, slower than this is logged as discovery.slow (0 = off)",
        "KVSYNC_DISCOVERY_SLOW_MS",
        DISCOVERY_SLOW_DEFAULT_MS,
      ).argParser(parseIntArg),
    );
}

export function discoveryOptionsFrom(o: Record<string, unknown>): DiscoveryOptions {
  const ns = o.namespace;
  return {
    discovery: o.discovery as DiscoveryOptions["discovery"],
    engines: o.engines as string | undefined,
    namespaces: Array.isArray(ns) ? ns : typeof ns === "string" ? splitList(ns, []) : undefined,
    labelSelector: o.labelSelector as string | undefined,
    kubeconfig: o.kubeconfig as string | undefined,
    resyncMs: typeof o.resyncSeconds === "number" ? o.resyncSeconds * 1000 : undefined,
    slowRequestMs: typeof o.discoverySlowMs === "number" ? o.discoverySlowMs : undefined,
  };
}
