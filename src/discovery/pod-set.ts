import type { DiscoveryEvent, PodInfo } from "./types.ts";

/**
 * One change to the pod set. `updated` carries the previous value; `endpointsChanged` tells a
 * subscriber manager that the streams must be restarted (address, ports or rank count moved)
 * and the pod's old index entries dropped, as opposed to a flag change (ready, loras, model).
 */
export type PodChange =
  | { type: "added"; name: string; pod: PodInfo }
  | { type: "updated"; name: string; pod: PodInfo; previous: PodInfo; endpointsChanged: boolean }
  | { type: "removed"; name: string; previous: PodInfo };

export type PodSetListener = (pods: ReadonlyMap<string, PodInfo>, changes: readonly PodChange[]) => void;

/** True when the two values differ in anything a stream subscription depends on. */
export function endpointsDiffer(a: PodInfo, b: PodInfo): boolean {
  return (
    a.http !== b.http ||
    a.events !== b.events ||
    a.replay !== b.replay ||
    a.dataParallelSize !== b.dataParallelSize ||
    (a.dataParallelStartRank ?? 0) !== (b.dataParallelStartRank ?? 0) ||
    a.model !== b.model ||
    a.blockSize !== b.blockSize
  );
}

export function samePod(a: PodInfo, b: PodInfo): boolean {
  if (endpointsDiffer(a, b) || a.name !== b.name || a.ready !== b.ready) return false;
  if (a.loras.length !== b.loras.length) return false;
  for (let i = 0; i < a.loras.length; i++) if (a.loras[i] !== b.loras[i]) return false;
  return true;
}

function clonePod(p: PodInfo): PodInfo {
  const c: PodInfo = { ...p, loras: [...p.loras] };
  if (c.blockSize === undefined) delete c.blockSize;
  if (c.dataParallelStartRank === undefined) delete c.dataParallelStartRank;
  return Object.freeze(c) as PodInfo;
}

/**
 * The current set of engine pods, fed by a `DiscoverySource`'s events. Listeners get the full
 * current set and the list of changes, once per event that changed something (an upsert of an
 * identical pod, a delete of an unknown name and a sync equal to the current set notify nobody).
 * Pods handed out are frozen copies.
 */
export class PodSet {
  private readonly map = new Map<string, PodInfo>();
  private readonly listeners = new Set<PodSetListener>();

  /** Apply one discovery event; returns the changes it made (also sent to listeners). */
  apply(ev: DiscoveryEvent): PodChange[] {
    const changes: PodChange[] = [];
    switch (ev.type) {
      case "upsert":
        this.upsert(ev.pod, changes);
        break;
      case "delete":
        this.remove(ev.name, changes);
        break;
      case "sync": {
        const keep = new Set<string>();
        for (const p of ev.pods) keep.add(p.name);
        for (const name of [...this.map.keys()]) if (!keep.has(name)) this.remove(name, changes);
        for (const p of ev.pods) this.upsert(p, changes);
        break;
      }
    }
    if (changes.length > 0) {
      for (const l of [...this.listeners]) l(this.map, changes);
    }
    return changes;
  }

  /** Bound method, handy as a source's `onEvent`: `source.start(set.handler)`. */
  readonly handler = (ev: DiscoveryEvent): void => {
    this.apply(ev);
  };

  /** Subscribe; returns an unsubscribe function. */
  onChange(listener: PodSetListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  get size(): number {
    return this.map.size;
  }

  get(name: string): PodInfo | undefined {
    return this.map.get(name);
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  /** Every known pod (subscribers follow these), sorted by name. */
  pods(): PodInfo[] {
    return [...this.map.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Pods the router may send requests to, sorted by name. */
  routable(): PodInfo[] {
    return this.pods().filter((p) => p.ready);
  }

  names(): string[] {
    return this.pods().map((p) => p.name);
  }

  private upsert(pod: PodInfo, changes: PodChange[]): void {
    const prev = this.map.get(pod.name);
    if (prev === undefined) {
      const c = clonePod(pod);
      this.map.set(pod.name, c);
      changes.push({ type: "added", name: pod.name, pod: c });
      return;
    }
    if (samePod(prev, pod)) return;
    const c = clonePod(pod);
    this.map.set(pod.name, c);
    changes.push({
      type: "updated",
      name: pod.name,
      pod: c,
      previous: prev,
      endpointsChanged: endpointsDiffer(prev, c),
    });
  }

  private remove(name: string, changes: PodChange[]): void {
    const prev = this.map.get(name);
    if (prev === undefined) return;
    this.map.delete(name);
    changes.push({ type: "removed", name, previous: prev });
  }
}
