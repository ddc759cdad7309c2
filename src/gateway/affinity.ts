/**
 * Which pod answered a `/v1/responses` request, by response id: vLLM keeps stored responses in
 * the memory of the server that made them (with its response store on), so a request continuing
 * one (`previous_response_id`) must go to that pod; any other answers 404. Bounded: the oldest
 * ids are forgotten first (their follow-ups then route by load).
 */
export class ResponseAffinity {
  private readonly pods = new Map<string, string>();

  constructor(private readonly max = 100_000) {}

  /** `id` was answered by `pod`. */
  record(id: string, pod: string): void {
    if (this.pods.has(id)) this.pods.delete(id);
    else if (this.pods.size >= this.max) {
      const oldest = this.pods.keys().next().value;
      if (oldest !== undefined) this.pods.delete(oldest);
    }
    this.pods.set(id, pod);
  }

  /** The pod holding response `id`, if known. */
  podOf(id: string): string | undefined {
    return this.pods.get(id);
  }

  get size(): number {
    return this.pods.size;
  }
}
