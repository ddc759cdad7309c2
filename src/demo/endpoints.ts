/**
 * The demo's warm-up also puts one request to each of vLLM's other endpoints through the
 * gateway (embeddings, responses, score, rerank, tokenize), so a demo run shows they pass
 * through and a broken one stops it with its status and body.
 */
export async function exerciseEndpoints(baseUrl: string, model: string, timeoutMs: number): Promise<void> {
  const text = "The demo checks every endpoint of the gateway once before it measures anything.";
  const calls: Array<[string, Record<string, unknown>]> = [
    ["/v1/embeddings", { model, input: [text, `${text} Twice.`] }],
    ["/v1/responses", { model, input: text, max_output_tokens: 2 }],
    ["/score", { model, queries: text, documents: ["one", "two"] }],
    ["/rerank", { model, query: text, documents: ["one", "two"], top_n: 1 }],
    ["/tokenize", { model, prompt: text }],
  ];
  await Promise.all(
    calls.map(async ([path, body]) => {
      const r = await fetch(`${baseUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const answer = await r.text();
      if (r.status !== 200)
        throw new Error(`warm-up ${path} failed: HTTP ${r.status} ${answer.slice(0, 300)}`);
    }),
  );
}
