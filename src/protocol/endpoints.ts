/**
 * vLLM's data-parallel endpoint rule, shared by the publisher side (mock engine) and the
 * subscriber side. vLLM's `ZmqEventPublisher.offset_endpoint_port` (vllm/distributed/kv_events.py)
 * adds the engine's data-parallel index to the port of BOTH the PUB and the replay endpoint
 * (rank 0 on the ports as configured); inproc paths get a `_dp<r>` suffix, which the mock engine
 * also uses for ipc paths (vLLM refuses ipc with a rank > 0). The index is global: a pod running
 * ranks s..s+n-1 of a larger DP group (`--data-parallel-start-rank s`) publishes on port + s + i.
 */
export function dataParallelEndpoint(endpoint: string, rank: number): string | null {
  if (rank === 0) return endpoint;
  const m = /^(tcp:\/\/.+:)(\d+)$/.exec(endpoint);
  if (!m) return /^(ipc|inproc):\/\/./.test(endpoint) ? `${endpoint}_dp${rank}` : null;
  const port = Number(m[2]) + rank;
  if (port > 65535) return null;
  return `${m[1]}${port}`;
}

/** The endpoints one data-parallel rank of an engine publishes on. */
export interface RankEndpoints {
  /** the rank within the pod (0-based; the stream's rank and the X-data-parallel-rank header) */
  local: number;
  /** the rank in the whole DP group: start + local (the port offset and the batch's dp rank) */
  global: number;
  events: string;
  replay: string | null;
}

export interface DataParallelLayout {
  /** PUB endpoint of the pod's first rank as configured (its port is offset by `startRank`) */
  events: string;
  /** replay ROUTER endpoint, offset like `events`; null for no replay */
  replay: string | null;
  /** ranks in the pod */
  size: number;
  /** global rank of the pod's first rank (vLLM `--data-parallel-start-rank`), default 0 */
  startRank?: number;
  /** the engine's HTTP endpoint as tcp://host:port, checked for collisions too */
  http?: string | null;
  /** the PUB connects out (vLLM's connect mode) instead of binding: it occupies no local port */
  eventsConnect?: boolean;
}

/** A layout in which two sockets of one engine land on the same address. */
export class LayoutError extends Error {
  override readonly name = "LayoutError";
  constructor(
    message: string,
    /** "collision" (two sockets, one address) or "range" (a port past 65535, an underivable endpoint) */
    readonly code: "collision" | "range",
  ) {
    super(message);
  }
}

/** "tcp://*:5557" and "tcp://0.0.0.0:5557" both occupy port 5557 on every address of the host. */
function addressKey(endpoint: string): string {
  const m = /^tcp:\/\/(.*):(\d+)$/.exec(endpoint);
  return m ? `tcp:${m[2]}` : endpoint;
}

/** Ephemeral tcp ports ("tcp://host:*") are chosen by the OS: never a collision, not derivable. */
function ephemeral(endpoint: string): boolean {
  return endpoint.startsWith("tcp://") && !/:\d+$/.test(endpoint);
}

/**
 * Every rank's endpoints under vLLM's rule, or a `LayoutError` when the layout cannot work: two
 * sockets of the engine on one address (with the defaults 5557/5558 and two ranks, rank 1's PUB
 * is rank 0's replay port), a port past 65535. All sockets of one engine share a host, so tcp
 * endpoints collide on the port alone. Ephemeral ports are kept as given for every rank.
 */
export function dataParallelLayout(l: DataParallelLayout): RankEndpoints[] {
  const start = l.startRank ?? 0;
  const size = Math.max(1, l.size | 0);
  const out: RankEndpoints[] = [];
  const owners = new Map<string, string>();
  const claim = (endpoint: string, who: string) => {
    if (ephemeral(endpoint)) return;
    const key = addressKey(endpoint);
    const prev = owners.get(key);
    if (prev !== undefined) {
      throw new LayoutError(
        `${who} and ${prev} are both on ${endpoint}: vLLM offsets the events and the replay port by ` +
          "the data-parallel rank, so their ranges must not overlap (give the replay port a base " +
          "at least the rank count away, e.g. events 5557 and replay 5657)",
        "collision",
      );
    }
    owners.set(key, who);
  };
  if (l.http) claim(l.http, "the HTTP server");
  const rankEndpoint = (base: string, g: number, what: string): string => {
    if (ephemeral(base)) return base;
    const e = dataParallelEndpoint(base, g);
    if (e === null)
      throw new LayoutError(`no ${what} endpoint for data-parallel rank ${g} of ${base}`, "range");
    return e;
  };
  for (let i = 0; i < size; i++) {
    const g = start + i;
    const events = rankEndpoint(l.events, g, "events");
    const replay = l.replay === null ? null : rankEndpoint(l.replay, g, "replay");
    const name = size === 1 && start === 0 ? "" : ` of rank ${g}`;
    if (!l.eventsConnect) claim(events, `the events PUB${name}`);
    if (replay !== null) claim(replay, `the replay ROUTER${name}`);
    out.push({ local: i, global: g, events, replay });
  }
  return out;
}
