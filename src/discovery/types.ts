/**
 * Discovery contract: a source reports the set of engine pods; subscribers and the router
 * follow it. Both the Kubernetes informer and the static file produce `PodInfo`s.
 */
export interface PodInfo {
  /** unique name: "<namespace>/<pod>" for Kubernetes, the file's `name` for static */
  name: string;
  /** base model served */
  model: string;
  /** LoRA adapter names the pod serves */
  loras: string[];
  /** http base URL, e.g. http://10.0.0.5:8000 */
  http: string;
  /** PUB endpoint of rank 0, e.g. tcp://10.0.0.5:5557 */
  events: string | null;
  /** replay ROUTER endpoint of rank 0, or null */
  replay: string | null;
  /** data-parallel ranks in the pod; rank i uses the events/replay port + start + i (vLLM's rule) */
  dataParallelSize: number;
  /**
   * global rank of the pod's first rank when the pod runs part of a larger DP group (vLLM
   * `--data-parallel-start-rank`): its ports are offset by it and its batches carry it; default 0
   */
  dataParallelStartRank?: number;
  /** routable: Ready with an address */
  ready: boolean;
  /** engine block size if known (tokens), else the index default */
  blockSize?: number;
}

/** Block size (tokens) of an engine that does not declare one: vLLM's default. */
export const DEFAULT_BLOCK_SIZE = 16;

export type DiscoveryEvent =
  | { type: "upsert"; pod: PodInfo }
  | { type: "delete"; name: string }
  /** full snapshot: pods not in it are gone */
  | { type: "sync"; pods: PodInfo[] };

export interface DiscoverySource {
  readonly kind: string;
  start(onEvent: (ev: DiscoveryEvent) => void): Promise<void>;
  stop(): Promise<void>;
  /** true while the source cannot reach its backend (last known set stays in use) */
  degraded(): boolean;
}
