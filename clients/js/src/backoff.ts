/**
 * Reconnect backoff: capped exponential with full jitter, the formula and
 * defaults of the reconnecting clients of surge's simulator
 * (`surge-sim run reconnect_storm`, flags `--backoff` and `--backoff-cap`),
 * so that the simulator's reconnect storms predict what this client does.
 *
 *   ceiling(n) = min(capMs, baseMs * 2^min(n, 16))
 *   delay(n)   = random() * ceiling(n)
 *
 * `n` counts the attempts since the last connection that reached `welcome`
 * (0 for the first retry). With the defaults (250 ms, 8 s) the delays are
 * drawn below 250 ms, 500 ms, 1 s, 2 s, 4 s, then 8 s for every further
 * attempt.
 */
export interface BackoffOptions {
  /** First ceiling, in ms (the simulator's `--backoff`, default 250 ms). */
  baseMs: number;
  /** Largest ceiling, in ms (the simulator's `--backoff-cap`, default 8 s). */
  capMs: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = Object.freeze({
  baseMs: 250,
  capMs: 8_000,
});

/** The largest delay attempt `n` can wait (the jitter draws below it). */
export function backoffCeiling(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const n = Math.min(Math.max(0, Math.floor(attempt)), 16);
  return Math.min(options.capMs, options.baseMs * 2 ** n);
}

/**
 * The delay before retry number `attempt`, with `random` in [0, 1):
 * anywhere between 0 and the ceiling (full jitter).
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const ceiling = backoffCeiling(attempt, options);
  const r = Math.min(Math.max(random(), 0), 1);
  return ceiling * r;
}

/**
 * A retry hint in a close reason, as in "… retry after 5s" or
 * "retry_after_ms=2500": the least time to wait before reconnecting, in
 * ms. `null` when the reason carries none.
 */
export function retryHintMs(reason: string): number | null {
  const ms = /retry_after_ms\s*=\s*(\d+)/i.exec(reason);
  if (ms?.[1] !== undefined) return Number(ms[1]);
  const text = /retry(?:[ -_]after)?\s+(?:in\s+)?(\d+(?:\.\d+)?)\s*(ms|s)\b/i.exec(reason);
  if (text?.[1] !== undefined) {
    const value = Number(text[1]);
    return text[2]?.toLowerCase() === "ms" ? value : value * 1000;
  }
  return null;
}
