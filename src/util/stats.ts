/** Nearest-rank percentile (q in [0, 1]) of values sorted ascending; NaN for none. */
export function percentileSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  return sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))];
}

/** Nearest-rank percentile (q in [0, 1]) of unsorted values (sorts a copy); NaN for none. */
export function percentile(values: readonly number[], q: number): number {
  return percentileSorted(
    [...values].sort((a, b) => a - b),
    q,
  );
}
