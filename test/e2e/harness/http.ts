/** Small HTTP helpers with timeouts and messages that say which URL failed. */

export interface JsonResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  ms: number;
}

export async function getJson<T = unknown>(url: string, timeoutMs = 5000): Promise<T> {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  if (!r.ok) throw new Error(`GET ${url} → ${r.status}: ${text.slice(0, 300)}`);
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new Error(`GET ${url}: not JSON: ${text.slice(0, 200)}`);
  }
}

export async function getText(url: string, timeoutMs = 5000): Promise<string> {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  if (!r.ok) throw new Error(`GET ${url} → ${r.status}: ${text.slice(0, 300)}`);
  return text;
}

export async function postJson<T = unknown>(
  url: string,
  body: unknown,
  opts: { timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<JsonResponse<T>> {
  const t0 = performance.now();
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...opts.headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000),
  });
  const text = await r.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // keep text
  }
  return { status: r.status, headers: r.headers, body: parsed as T, ms: performance.now() - t0 };
}

/** True when `url` answers 2xx. */
export async function answers(url: string, timeoutMs = 1000): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await r.arrayBuffer();
    return r.ok;
  } catch {
    return false;
  }
}
