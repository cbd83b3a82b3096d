/**
 * The client against the real `surge` binary with its embedded broker:
 * a connection cut mid-stream resumes with every message once and in
 * order; a restarted gateway (a new stream) is reported as a gap; a lost
 * frame is replayed; a dead connection TCP cannot see is detected.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { connect, CLIENT_GAVE_UP, type ClientEvents, type SurgeClient } from "../../src/index.js";
import { FIXED_RECONNECT, Proxy, sleep, Surge, waitFor } from "./harness.js";

let surge: Surge;

before(async () => {
  // Uncompressed, so the test proxy can read (and drop) message frames.
  surge = await Surge.start({
    env: { SURGE_PING_INTERVAL: "1s", SURGE_IDLE_TIMEOUT: "30s", SURGE_COMPRESSION: "false" },
  });
});

after(async () => {
  await surge.stop();
});

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

/** Subscribes `odin.token.*.trade` and collects each message's `n`. */
async function trades(c: SurgeClient): Promise<number[]> {
  const got: number[] = [];
  const resumed = record(c, "resumed");
  c.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
  await waitFor("the first resume (anchor)", () => resumed.length > 0);
  return got;
}

function oneToN(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

test("connection cut mid-stream: after the reconnect, resume delivers every message exactly once, in order", async () => {
  const proxy = await Proxy.start(surge.wsPort);
  const c = connect(proxy.url, { WebSocket, ...FIXED_RECONNECT });
  const closes = record(c, "disconnected");
  try {
    const got = await trades(c);
    const total = 300;
    for (let n = 1; n <= total; n++) {
      await surge.publish(`odin.token.T${n % 3}.trade`, { n });
      if (n === 100) proxy.sever();
      if (n % 20 === 0) await sleep(5);
    }
    await waitFor(`all ${total} messages (have ${got.length})`, () => got.length >= total, 15_000);
    assert.deepEqual(got, oneToN(total));
    assert.ok(closes.length >= 1, "the connection was cut");
    assert.ok(c.stats.recovered > 0, "some messages came from the resume");
    assert.equal(proxy.connections, 2);
  } finally {
    c.close();
    await proxy.close();
  }
});

test("a lost message frame is noticed by its seq and replayed, in order", async () => {
  const proxy = await Proxy.start(surge.wsPort);
  const c = connect(proxy.url, { WebSocket });
  try {
    const got = await trades(c);
    let dropped = 0;
    proxy.dropServerFrame((frame) => {
      const data = frame["data"] as { n?: number } | undefined;
      if (frame["type"] === "message" && frame["replayed"] !== true && (data?.n === 5 || data?.n === 6)) {
        dropped += 1;
        return true;
      }
      return false;
    });
    for (let n = 1; n <= 20; n++) await surge.publish(`odin.token.T${n % 3}.trade`, { n });
    await waitFor(`20 messages (have ${got.length})`, () => got.length >= 20);
    assert.equal(dropped, 2);
    assert.deepEqual(got, oneToN(20));
    assert.equal(c.stats.replayRequests, 1);
    assert.equal(proxy.connections, 1, "filled by replay, without reconnecting");
  } finally {
    c.close();
    await proxy.close();
  }
});

test("a connection that goes silent (no FIN, no RST) is detected by the heartbeat and replaced", async () => {
  const proxy = await Proxy.start(surge.wsPort);
  // The welcome's ping_interval_ms is 1000 (SURGE_PING_INTERVAL=1s).
  const c = connect(proxy.url, { WebSocket, heartbeat: { timeoutMs: 1_000 } });
  const closes = record(c, "disconnected");
  try {
    const got = await trades(c);
    await surge.publish("odin.token.A.trade", { n: 1 });
    await waitFor("message 1", () => got.length === 1);
    proxy.blackhole();
    const silentAt = Date.now();
    await waitFor("the heartbeat to give up", () => closes.length > 0, 10_000);
    assert.equal(closes[0]?.code, CLIENT_GAVE_UP);
    assert.match(closes[0]?.reason ?? "", /heartbeat timeout/);
    assert.ok(Date.now() - silentAt < 5_000, "within ping interval + timeout, plus scheduling slack");
    await waitFor("the new connection", () => c.state.status === "connected" && proxy.connections === 2);
    await surge.publish("odin.token.A.trade", { n: 2 });
    await waitFor("message 2", () => got.length === 2);
    assert.deepEqual(got, [1, 2]);
  } finally {
    c.close();
    await proxy.close();
  }
});

test("gateway killed and restarted (embedded broker: a new stream): the epoch change is reported, delivery continues", async () => {
  const own = await Surge.start();
  const c = connect(own.url, { WebSocket });
  const gaps = record(c, "gap");
  try {
    const got = await trades(c);
    await own.publish("odin.token.A.trade", { n: 1 });
    await waitFor("message 1", () => got.length === 1);
    const before = c.position();
    await own.kill();
    await own.start();
    await waitFor("the epoch_changed gap", () => gaps.length > 0, 15_000);
    assert.equal(gaps[0]?.kind, "epoch_changed");
    assert.notEqual(c.position().epoch, before.epoch);
    await own.publish("odin.token.A.trade", { n: 2 });
    await waitFor("message 2", () => got.length === 2);
    assert.deepEqual(got, [1, 2]);
  } finally {
    c.close();
    await own.stop();
  }
});

test("a full gateway (503 before the upgrade): refused attempts back off with a growing delay until a slot frees", async () => {
  const full = await Surge.start({ maxConnections: 1, shards: 1 });
  const holder = connect(full.url, { WebSocket });
  const c = connect(full.url, { WebSocket, autoConnect: false, backoff: { baseMs: 100, capMs: 800 } });
  const reconnects = record(c, "reconnecting");
  const closes = record(c, "disconnected");
  try {
    await waitFor("the holder connected", () => holder.state.status === "connected");
    c.connect();
    await waitFor("four refusals", () => reconnects.length >= 4, 10_000);
    assert.equal(c.state.status === "connected", false);
    // Each refusal is a failed attempt: the attempt count (and the backoff ceiling) grows.
    assert.deepEqual(
      reconnects.slice(0, 4).map((r) => [r.cause, r.attempt]),
      [
        ["refused", 0],
        ["refused", 1],
        ["refused", 2],
        ["refused", 3],
      ],
    );
    // Full jitter: each delay is drawn below its attempt's ceiling, which doubles.
    for (const [i, r] of reconnects.slice(0, 4).entries()) {
      const ceiling = Math.min(800, 100 * 2 ** i);
      assert.ok(r.delayMs >= 0 && r.delayMs <= ceiling, `delay ${r.delayMs} for attempt ${i} (ceiling ${ceiling})`);
    }
    // A browser sees only 1006; Node's ws also reports the status.
    assert.equal(closes[0]?.opened, false);
    assert.equal(closes[0]?.httpStatus, 503);
    holder.close();
    await waitFor("connected once the slot is free", () => c.state.status === "connected", 10_000);
  } finally {
    holder.close();
    c.close();
    await full.stop();
  }
});
