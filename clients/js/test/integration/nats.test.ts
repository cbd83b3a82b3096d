/**
 * The client against real `surge` processes reading one real NATS
 * JetStream stream: a gateway killed and restarted mid-stream, and a
 * failover from a killed gateway to another one; either way every message
 * arrives exactly once and in order.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { connect, type ClientEvents, type SurgeClient } from "../../src/index.js";
import { FIXED_RECONNECT, Nats, NatsPublisher, sleep, Surge, waitFor } from "./harness.js";

let nats: Nats;

before(async () => {
  nats = await Nats.start();
});

after(async () => {
  await nats.stop();
});

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

function natsEnv(): Record<string, string> {
  return { SURGE_NATS_URL: nats.url, SURGE_JS_MAX_AGE: "5m" };
}

/** Waits until the gateway has reached NATS (welcome's epoch is known: /health broker.connected). */
async function brokerReady(surge: Surge): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const health = (await (await fetch(`${surge.admin}/health`)).json()) as { broker?: { connected?: boolean } };
    if (health.broker?.connected === true) return;
    if (Date.now() > deadline) throw new Error(`surge did not reach NATS:\n${surge.stderr()}`);
    await sleep(50);
  }
}

function oneToN(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

/** Publishes n = from..to on three subjects, `perTick` at a time, calling `at(n)` after each. */
async function feed(publisher: NatsPublisher, from: number, to: number, at: (n: number) => Promise<void> = async () => undefined): Promise<void> {
  for (let n = from; n <= to; n++) {
    publisher.publish(`odin.token.T${n % 3}.trade`, { n });
    if (n % 10 === 0) {
      await publisher.flush();
      await sleep(10);
    }
    await at(n);
  }
  await publisher.flush();
}

test("NATS: the gateway is killed and restarted mid-stream; every message arrives exactly once, in order", async () => {
  const surge = await Surge.start({ env: natsEnv() });
  await brokerReady(surge);
  const publisher = await NatsPublisher.connect(nats.port);
  const c = connect(surge.url, { WebSocket });
  const closes = record(c, "disconnected");
  const gaps = record(c, "gap");
  try {
    const got: number[] = [];
    const resumed = record(c, "resumed");
    c.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
    await waitFor("the anchor resume", () => resumed.length === 1);
    const total = 400;
    await feed(publisher, 1, total, async (n) => {
      if (n === 100) {
        await waitFor("the first 100 live", () => got.length === 100);
        await surge.kill();
      }
      if (n === 200) {
        // Published while no gateway ran: only the stream has them.
        await surge.start();
      }
    });
    await waitFor(`all ${total} (have ${got.length})`, () => got.length >= total, 20_000);
    assert.deepEqual(got, oneToN(total));
    assert.ok(closes.length >= 1);
    assert.ok(c.stats.recovered >= 100, `recovered ${c.stats.recovered}: at least what was published while it was down`);
    assert.deepEqual(gaps, [], "same stream, same epoch: no gap");
  } finally {
    c.close();
    publisher.close();
    await surge.stop();
  }
});

test("NATS: two gateways on one stream; the one in use is killed; the client fails over and resumes with nothing lost or repeated", async () => {
  const a = await Surge.start({ env: natsEnv() });
  const b = await Surge.start({ env: natsEnv() });
  await brokerReady(a);
  await brokerReady(b);
  const publisher = await NatsPublisher.connect(nats.port);
  const c = connect([a.url, b.url], { WebSocket, ...FIXED_RECONNECT });
  const connections = record(c, "connected");
  const gaps = record(c, "gap");
  try {
    const got: number[] = [];
    const resumed = record(c, "resumed");
    c.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
    await waitFor("the anchor resume", () => resumed.length === 1);
    assert.equal(connections[0]?.url, a.url);
    const total = 400;
    await feed(publisher, 1, total, async (n) => {
      if (n === 150) await a.kill();
    });
    await waitFor(`all ${total} (have ${got.length})`, () => got.length >= total, 20_000);
    assert.deepEqual(got, oneToN(total));
    assert.equal(connections[connections.length - 1]?.url, b.url, "failed over to the other gateway");
    assert.equal(connections[0]?.epoch, connections[connections.length - 1]?.epoch, "one stream, one epoch");
    assert.ok(c.stats.recovered > 0);
    assert.deepEqual(gaps, []);
  } finally {
    c.close();
    publisher.close();
    await a.stop();
    await b.stop();
  }
});
