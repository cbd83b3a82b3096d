/**
 * A slow consumer against the real `surge`: the client stops reading, the
 * gateway's queue for it fills and it is throttled; the client reports the
 * `throttle_update` and every `dropped` count, and what it received plus
 * what it was told it lost is exactly what was published.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";
import { connect, type ClientEvents, type SurgeClient } from "../../src/index.js";
import { Surge, waitFor } from "./harness.js";

/** A ws WebSocket whose reading the test pauses (the socket stops being read, as in a busy tab). */
class PausableWebSocket extends WebSocket {
  static last: PausableWebSocket | null = null;
  constructor(url: string) {
    super(url);
    PausableWebSocket.last = this;
  }
}

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

test("slow consumer: throttle notices and dropped counts reach the app, and received + dropped = published", async () => {
  const surge = await Surge.start({
    // Uncompressed: the socket buffers then fill at a known pace (deflate
    // would let many more messages through before the queue fills).
    env: {
      SURGE_OUTBOUND_QUEUE_BYTES: "64KiB",
      SURGE_ADMIN_PUBLISH_RATE: "0",
      SURGE_THROTTLE_FULL_EVENTS: "3",
      SURGE_COMPRESSION: "false",
    },
  });
  const c = connect(surge.url, { WebSocket: PausableWebSocket });
  const throttles = record(c, "throttle");
  const dropped = record(c, "dropped");
  const closes = record(c, "disconnected");
  const resumed = record(c, "resumed");
  let received = 0;
  let marker = false;
  try {
    c.subscribe<{ n: number; marker?: boolean }>("odin.token.*.trade", (m) => {
      received += 1;
      if (m.data.marker === true) marker = true;
    });
    await waitFor("subscribed", () => resumed.length === 1);
    const socket = PausableWebSocket.last;
    assert.ok(socket !== null);
    socket.pause();
    const pad = "x".repeat(16_000);
    let published = 0;
    // Until the gateway throttles this connection: the kernel's socket
    // buffers fill first, then the 64 KiB queue (bounded: 3,000 × 16 KB).
    for (let n = 1; n <= 3_000; n++) {
      await surge.publish(`odin.token.T${n % 3}.trade`, { n, pad });
      published += 1;
      if (n % 5 === 0 && /surge_throttle_changes_total [1-9]/.test(await surge.metrics())) break;
    }
    assert.match(await surge.metrics(), /surge_throttle_changes_total [1-9]/, `not throttled after ${published} messages`);
    socket.resume();
    await waitFor("the throttle notice", () => throttles.length > 0, 10_000);
    assert.ok((throttles[0]?.level ?? 0) >= 1);
    assert.ok((throttles[0]?.ratePercent ?? 100) < 100);
    // Critical messages are never throttled; the next delivered message carries the count of those skipped.
    await surge.publish("odin.token.M.trade", { n: published + 1, marker: true }, "critical");
    published += 1;
    await waitFor("the marker", () => marker, 15_000);
    const lost = dropped.reduce((sum, d) => sum + d.count, 0);
    console.log(`published ${published}, received ${received}, dropped ${lost}, throttle ${JSON.stringify(throttles)}`);
    assert.ok(lost > 0, "messages were skipped");
    assert.equal(received + lost, published, `received ${received} + dropped ${lost} = published ${published}`);
    assert.deepEqual(closes, []);
    assert.equal(c.state.throttle?.level, throttles[throttles.length - 1]?.level);
  } finally {
    c.close();
    await surge.stop();
  }
});
