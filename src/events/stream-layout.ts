/**
 * The streams a pod has: one per data-parallel rank, at the endpoints vLLM's rule gives each
 * rank (src/protocol/endpoints.ts). A layout whose sockets collide (rank 1's PUB on rank 0's
 * replay port with the defaults 5557/5558) is refused as a whole: subscribing would read the
 * wrong socket (a SUB on a ROUTER never completes its handshake; a replay DEALER on another
 * rank's PUB never answers) and leave the pod silently without hits.
 */
import type { PodInfo } from "../discovery/types.ts";
import type { StreamRef } from "../index/types.ts";
import { dataParallelLayout, LayoutError } from "../protocol/endpoints.ts";
import { podStreamIds } from "./types.ts";

export interface StreamSpec {
  ref: StreamRef;
  events: string;
  replay: string | null;
  /**
   * the `data_parallel_rank` this stream's batches carry (the rank's global index), or null
   * when the pod is a single engine at rank 0 (its batches are not checked)
   */
  dpRank: number | null;
}

/** A pod's streams, or why it has none it can subscribe to. */
export interface PodStreams {
  specs: StreamSpec[];
  /** the pod's layout cannot work; nothing is subscribed */
  error: LayoutError | null;
}

/**
 * "http://host:port" → "tcp://host:port" when the HTTP server is on the events endpoint's host,
 * so the layout check sees the HTTP port too (on another host it cannot collide).
 */
function httpAsTcp(http: string, events: string): string | null {
  try {
    const u = new URL(http);
    const e = /^tcp:\/\/(.*):[^:]*$/.exec(events);
    if (e === null || e[1] !== u.hostname) return null;
    const port = u.port !== "" ? u.port : u.protocol === "https:" ? "443" : "80";
    return `tcp://${u.hostname}:${port}`;
  } catch {
    return null;
  }
}

export function podStreams(pod: PodInfo): PodStreams {
  if (pod.events === null) return { specs: [], error: null };
  // the ids and ranks come from the one naming rule; the layout adds each rank's endpoints
  const ids = podStreamIds(pod);
  const size = ids.length;
  const start = pod.dataParallelStartRank ?? 0;
  let ranks: ReturnType<typeof dataParallelLayout>;
  try {
    ranks = dataParallelLayout({
      events: pod.events,
      replay: pod.replay,
      size,
      startRank: start,
      http: httpAsTcp(pod.http, pod.events),
    });
  } catch (err) {
    if (err instanceof LayoutError) return { specs: [], error: err };
    throw err;
  }
  const checked = size > 1 || start > 0;
  const specs = ranks.map((r) => {
    const { streamId, rank } = ids[r.local]!;
    return {
      ref: { streamId, pod: pod.name, rank, model: pod.model },
      events: r.events,
      replay: r.replay,
      dpRank: checked ? r.global : null,
    };
  });
  return { specs, error: null };
}

/** The streams a pod has (none without an events endpoint); throws `LayoutError` for a colliding layout. */
export function streamsOf(pod: PodInfo): StreamSpec[] {
  const s = podStreams(pod);
  if (s.error) throw s.error;
  return s.specs;
}
