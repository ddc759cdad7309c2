/**
 * vLLM's data-parallel endpoint rule, shared by the publisher side (mock engine) and the
 * subscriber side: rank r of an engine publishes on the events / replay TCP port + r (rank 0 on
 * the port as configured); ipc and inproc paths get a `_dp<r>` suffix (the mock engine's
 * convention for them).
 */
export function dataParallelEndpoint(endpoint: string, rank: number): string | null {
  if (rank === 0) return endpoint;
  const m = /^(tcp:\/\/.+:)(\d+)$/.exec(endpoint);
  if (!m) return /^(ipc|inproc):\/\/./.test(endpoint) ? `${endpoint}_dp${rank}` : null;
  const port = Number(m[2]) + rank;
  if (port > 65535) return null;
  return `${m[1]}${port}`;
}
