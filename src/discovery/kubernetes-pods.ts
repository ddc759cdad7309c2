/**
 * The pod -> engine rules of `--discovery kubernetes`: which labels, annotations and ports of an
 * engine pod make its `PodInfo`. Pure functions of the pod object; the source applies them.
 */
import type { V1Pod } from "@kubernetes/client-node";
import type { PodInfo } from "./types.ts";

/** Labels and annotations read from engine pods (AIBrix's labels, plus kvsync's annotations). */
export const LABELS = {
  /** selects the pods that publish KV events (the default label selector) */
  kvEventsEnabled: "model.aibrix.ai/kv-events-enabled",
  /** base model served; annotation (any served name) or label (AIBrix's, label-value syntax) */
  model: "model.aibrix.ai/name",
  /** one LoRA adapter the pod serves (label) */
  loraId: "model.aibrix.ai/lora-id",
  /** AIBrix's engine HTTP port label, used when kvsync's annotation is absent */
  aibrixPort: "model.aibrix.ai/port",
} as const;

export const ANNOTATIONS = {
  /** comma-separated LoRA adapter names, e.g. "sql-lora,chat-lora" */
  loraAdapters: "kvsync.io/lora-adapters",
  /** engine HTTP port (default 8000) */
  httpPort: "kvsync.io/http-port",
  /** ZeroMQ PUB port of rank 0 (default 5557); "none" for a pod without KV events */
  eventsPort: "kvsync.io/kv-events-port",
  /**
   * ZeroMQ replay ROUTER port of rank 0 (default 5558); "none" for no replay. vLLM offsets it by
   * the rank like the events port: with N ranks it must be at least N away from the events port
   */
  replayPort: "kvsync.io/kv-replay-port",
  /** data-parallel ranks in the pod (default 1); rank r publishes on the events/replay port + r */
  dataParallelSize: "kvsync.io/data-parallel-size",
  /** global rank of the pod's first rank (vLLM --data-parallel-start-rank; ports offset by it) */
  dataParallelStartRank: "kvsync.io/data-parallel-start-rank",
  /** engine block size in tokens (optional) */
  blockSize: "kvsync.io/block-size",
} as const;

export const DEFAULT_PORTS = { http: 8000, events: 5557, replay: 5558 } as const;
export const DEFAULT_LABEL_SELECTOR = `${LABELS.kvEventsEnabled}=true`;

/** Why a pod object was not turned into a `PodInfo`. */
export class PodSpecError extends Error {
  override readonly name = "PodSpecError";
}

function parsePort(v: string | undefined, dflt: number, what: string): number | null {
  if (v === undefined || v.trim() === "") return dflt;
  const s = v.trim().toLowerCase();
  if (s === "none" || s === "off" || s === "0") return null;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new PodSpecError(`${what}: bad port ${JSON.stringify(v)}`);
  return n;
}

function hostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Turn a pod object into a `PodInfo`, or null when it has no address yet (nothing to subscribe
 * to). Throws `PodSpecError` for a pod that cannot be used (no model, bad annotation).
 * `previous` keeps a known pod's endpoints when its IP is withdrawn (not routable, stream kept).
 */
export function podInfoFromPod(pod: V1Pod, previous?: PodInfo): PodInfo | null {
  const md = pod.metadata ?? {};
  const labels = md.labels ?? {};
  const ann = md.annotations ?? {};
  const ns = md.namespace ?? "default";
  const name = `${ns}/${md.name ?? ""}`;
  // The annotation wins: it can hold any served name ("Qwen/Qwen3-0.6B"), which a label value
  // cannot (no "/"); the label is AIBrix's sanitized name.
  const model = (ann[LABELS.model] ?? labels[LABELS.model] ?? "").trim();
  if (model === "") throw new PodSpecError(`no model: set the label or annotation ${LABELS.model}`);
  const loras: string[] = [];
  const addLora = (s: string | undefined) => {
    const v = s?.trim();
    if (v && !loras.includes(v)) loras.push(v);
  };
  addLora(labels[LABELS.loraId]);
  for (const a of (ann[ANNOTATIONS.loraAdapters] ?? "").split(",")) addLora(a);

  const httpPort = parsePort(
    ann[ANNOTATIONS.httpPort] ?? labels[LABELS.aibrixPort],
    DEFAULT_PORTS.http,
    ANNOTATIONS.httpPort,
  );
  if (httpPort === null) throw new PodSpecError(`${ANNOTATIONS.httpPort}: an engine needs an HTTP port`);
  const eventsPort = parsePort(ann[ANNOTATIONS.eventsPort], DEFAULT_PORTS.events, ANNOTATIONS.eventsPort);
  const replayPort =
    eventsPort === null
      ? null
      : parsePort(ann[ANNOTATIONS.replayPort], DEFAULT_PORTS.replay, ANNOTATIONS.replayPort);
  let dataParallelSize = 1;
  const dpRaw = ann[ANNOTATIONS.dataParallelSize];
  if (dpRaw !== undefined && dpRaw.trim() !== "") {
    const n = Number(dpRaw.trim());
    if (!Number.isInteger(n) || n < 1 || n > 1024) {
      throw new PodSpecError(
        `${ANNOTATIONS.dataParallelSize}: expected 1..1024, got ${JSON.stringify(dpRaw)}`,
      );
    }
    dataParallelSize = n;
  }
  let startRank = 0;
  const srRaw = ann[ANNOTATIONS.dataParallelStartRank];
  if (srRaw !== undefined && srRaw.trim() !== "") {
    const n = Number(srRaw.trim());
    if (!Number.isInteger(n) || n < 0 || n > 65535) {
      throw new PodSpecError(
        `${ANNOTATIONS.dataParallelStartRank}: expected 0..65535, got ${JSON.stringify(srRaw)}`,
      );
    }
    startRank = n;
  }
  let blockSize: number | undefined;
  const bsRaw = ann[ANNOTATIONS.blockSize];
  if (bsRaw !== undefined && bsRaw.trim() !== "") {
    const n = Number(bsRaw.trim());
    if (!Number.isInteger(n) || n < 1) throw new PodSpecError(`${ANNOTATIONS.blockSize}: bad value ${bsRaw}`);
    blockSize = n;
  }
  const ip = pod.status?.podIP ?? "";
  const terminating = md.deletionTimestamp !== undefined && md.deletionTimestamp !== null;
  const readyCond = pod.status?.conditions?.find((c) => c.type === "Ready");
  const ready = ip !== "" && !terminating && readyCond?.status === "True";
  let http: string;
  let events: string | null;
  let replay: string | null;
  if (ip !== "") {
    http = `http://${hostPort(ip, httpPort)}`;
    events = eventsPort === null ? null : `tcp://${hostPort(ip, eventsPort)}`;
    replay = replayPort === null ? null : `tcp://${hostPort(ip, replayPort)}`;
  } else if (previous) {
    ({ http, events, replay } = previous);
  } else {
    return null;
  }
  const info: PodInfo = { name, model, loras, http, events, replay, dataParallelSize, ready };
  if (blockSize !== undefined) info.blockSize = blockSize;
  if (startRank > 0) info.dataParallelStartRank = startRank;
  return info;
}

/** Pods whose containers are gone for good: reported as deleted. */
export function podFinished(pod: V1Pod): boolean {
  const phase = pod.status?.phase;
  return phase === "Succeeded" || phase === "Failed";
}
