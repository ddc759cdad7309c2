/**
 * A stream subscriber's counters: what happened to the stream since it started. The subscriber
 * (subscriber.ts) counts, the manager turns them into metrics; they live apart so the
 * subscriber's file holds its decisions only.
 */
export class StreamCounters {
  eventsApplied = 0;
  batchesApplied = 0;
  decodeErrors = 0;
  gaps = 0;
  replays = 0;
  resyncs = 0;
  restarts = 0;
  duplicates = 0;
  /** undecodable batches applied from a good copy, and those without one */
  decodeRepairs = 0;
  decodeLosses = 0;
  /** times the stream became suspect, and rebuilds from the engine's buffer */
  suspects = 0;
  rebuilds = 0;
  /** suspect streams cleared by an audit (nothing dropped), and audits run */
  verifications = 0;
  audits = 0;
  /** connections lost to the heartbeat (no answer within the timeout) */
  stalls = 0;
  reconnects = 0;
  socketReplacements = 0;
  /** live seqs beyond the engine's buffer, discarded */
  bogusSeqs = 0;
  /** replays held back by the per-stream rate bound */
  replaysThrottled = 0;
  /** late backward seqs verified stale (not restarts) */
  staleBatches = 0;
  /** idle tail checks sent (not counted as replays) */
  probes = 0;
}
