/**
 * Rate limit for repeated warnings: a bucket of `burst` lines refilled one per `everyMs`. A
 * transition after a quiet spell is always logged (a chaos run sees the fault's first line even
 * when the machine was noisy before); a flapping signal costs at most one line per `everyMs`.
 */
export class LogBucket {
  private tokens: number;
  private refilledAt = Number.NaN;

  constructor(
    private readonly everyMs: number,
    private readonly burst = 5,
  ) {
    this.tokens = burst;
  }

  take(now: number): boolean {
    if (Number.isNaN(this.refilledAt)) this.refilledAt = now;
    const n = Math.floor((now - this.refilledAt) / this.everyMs);
    if (n > 0) {
      this.tokens = Math.min(this.burst, this.tokens + n);
      this.refilledAt += n * this.everyMs;
    }
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}
