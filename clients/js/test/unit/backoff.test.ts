import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffCeiling, backoffDelay, DEFAULT_BACKOFF, retryHintMs } from "../../src/index.js";

test("defaults are the simulator's reconnect_storm defaults: 250 ms base, 8 s cap", () => {
  assert.deepEqual({ ...DEFAULT_BACKOFF }, { baseMs: 250, capMs: 8_000 });
});

test("the ceiling doubles from the base and stops at the cap", () => {
  const ceilings = Array.from({ length: 9 }, (_, n) => backoffCeiling(n));
  assert.deepEqual(ceilings, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]);
  // The exponent stops at 16, as in the simulator, so huge attempt counts do not overflow.
  assert.equal(backoffCeiling(10_000, { baseMs: 1, capMs: 1e12 }), 2 ** 16);
});

test("full jitter: anywhere from 0 up to the ceiling", () => {
  for (let n = 0; n < 8; n++) {
    const c = backoffCeiling(n);
    assert.equal(backoffDelay(n, DEFAULT_BACKOFF, () => 0), 0, `attempt ${n} with random 0`);
    assert.equal(backoffDelay(n, DEFAULT_BACKOFF, () => 0.5), c / 2, `attempt ${n} with random 0.5`);
    assert.ok(backoffDelay(n, DEFAULT_BACKOFF, () => 0.999999) < c + 1e-9);
  }
  // The simulator's formula (sim/src/client.rs reconnect_delay), written out for one draw.
  assert.equal(backoffDelay(3, { baseMs: 100, capMs: 10_000 }, () => 0.25), 800 * 0.25);
});

test("a custom base and cap are used", () => {
  assert.equal(backoffDelay(0, { baseMs: 10, capMs: 15 }, () => 0.5), 5);
  assert.equal(backoffDelay(5, { baseMs: 10, capMs: 15 }, () => 0.5), 7.5);
});

test("retry hints in a close reason", () => {
  assert.equal(retryHintMs("overloaded; retry after 5s"), 5000);
  assert.equal(retryHintMs("Retry after 250ms"), 250);
  assert.equal(retryHintMs("retry_after_ms=1200"), 1200);
  assert.equal(retryHintMs("too many live messages during resume; reconnect and resume again"), null);
});
