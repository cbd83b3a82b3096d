/**
 * The client through HAProxy in front of three gateways on a 3-node NATS
 * JetStream cluster (the stream at 3 replicas), all started from the
 * files in deploy/cluster/ as the Rust multi-node tests do: the gateway
 * the client is on is killed (SIGKILL) mid-stream; the client reconnects
 * through the balancer to another one and resumes with every message
 * exactly once, in order.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { WebSocket } from "ws";
import { connect, type ClientEvents, type SurgeClient } from "../../src/index.js";
import { FIXED_RECONNECT, freePort, killChild, natsBinary, NatsPublisher, REPO_ROOT, sleep, spawnTracked, Surge, waitFor } from "./harness.js";

const DEPLOY = path.join(REPO_ROOT, "deploy", "cluster");

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

/** Whether something answers HTTP on `port` (through HAProxy: a gateway's 404). */
function portOpen(port: number): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}/`).then(
    () => true,
    () => false,
  );
}

async function waitPort(port: number, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await portOpen(port))) {
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port}`);
    await sleep(50);
  }
}

function haproxyBinary(): string {
  return ["/usr/sbin/haproxy", "/usr/bin/haproxy"].find((p) => existsSync(p)) ?? "haproxy";
}

test("cluster: the client's gateway is killed behind HAProxy; it resumes on another with nothing lost or repeated", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "surge-js-cluster-"));
  const nodes = await Promise.all([1, 2, 3].map(async (i) => ({ i, port: await freePort(), route: await freePort() })));
  const routes = nodes.map((n) => `nats://127.0.0.1:${n.route}`);
  const children = nodes.map((n) =>
    spawnTracked(natsBinary(), ["-c", path.join(DEPLOY, "nats.conf")], {
      env: {
        PATH: process.env["PATH"] ?? "",
        NATS_NAME: `nats-${n.i}`,
        NATS_LISTEN: `127.0.0.1:${n.port}`,
        NATS_STORE: path.join(dir, `nats-${n.i}`),
        NATS_CLUSTER_LISTEN: `127.0.0.1:${n.route}`,
        NATS_ROUTE_1: routes[0] ?? "",
        NATS_ROUTE_2: routes[1] ?? "",
        NATS_ROUTE_3: routes[2] ?? "",
      },
      stdio: "ignore",
    }),
  );
  const gateways: Surge[] = [];
  let lb: ReturnType<typeof spawnTracked> | null = null;
  let publisher: NatsPublisher | null = null;
  let c: SurgeClient | null = null;
  try {
    const urls = nodes.map((n) => `nats://127.0.0.1:${n.port}`).join(",");
    const env = { SURGE_NATS_URL: urls, SURGE_JS_REPLICAS: "3", SURGE_PUBLIC_HEALTHZ: "true", SURGE_JS_MAX_AGE: "5m" };
    // A gateway stops its start when the cluster has no JetStream leader
    // yet; try again until it has one.
    for (let g = 0; g < 3; g++) {
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          gateways.push(await Surge.start({ env }));
          break;
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await sleep(300);
        }
      }
    }
    const lbPort = await freePort();
    lb = spawnTracked(haproxyBinary(), ["-db", "-f", path.join(DEPLOY, "haproxy.cfg")], {
      env: {
        PATH: process.env["PATH"] ?? "",
        SURGE_LB_BIND: `127.0.0.1:${lbPort}`,
        SURGE_GW_1: `127.0.0.1:${gateways[0]?.wsPort ?? 0}`,
        SURGE_GW_2: `127.0.0.1:${gateways[1]?.wsPort ?? 0}`,
        SURGE_GW_3: `127.0.0.1:${gateways[2]?.wsPort ?? 0}`,
      },
      stdio: "ignore",
    });
    await waitPort(lbPort, "haproxy");
    // Every gateway seen ready by the balancer's probes (rise 2 at 250 ms).
    await sleep(1200);

    publisher = await NatsPublisher.connect(nodes[0]?.port ?? 0);
    const client = connect(`ws://127.0.0.1:${lbPort}/ws`, { WebSocket, ...FIXED_RECONNECT });
    c = client;
    const connections = record(client, "connected");
    const gaps = record(client, "gap");
    const resumed = record(client, "resumed");
    const got: number[] = [];
    client.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
    await waitFor("the first resume", () => resumed.length === 1);

    const onIt = async (): Promise<Surge> => {
      for (const g of gateways) {
        const health = (await (await fetch(`${g.admin}/health`)).json()) as { connections: { current: number } };
        if (health.connections.current > 0) return g;
      }
      throw new Error("the client is on no gateway");
    };
    const total = 400;
    for (let n = 1; n <= total; n++) {
      publisher.publish(`odin.token.T${n % 3}.trade`, { n });
      if (n % 10 === 0) {
        await publisher.flush();
        await sleep(10);
      }
      if (n === 150) await (await onIt()).kill();
    }
    await publisher.flush();
    await waitFor(`all ${total} (have ${got.length})`, () => got.length >= total, 30_000);
    assert.deepEqual(got, Array.from({ length: total }, (_, i) => i + 1), "every message once, in order");
    assert.ok(connections.length >= 2, "reconnected through the balancer");
    assert.equal(connections[0]?.epoch, connections[connections.length - 1]?.epoch, "one stream, one epoch");
    assert.ok(client.stats.recovered > 0, "what was missed came back by resume");
    assert.deepEqual(gaps, []);
  } finally {
    c?.close();
    publisher?.close();
    if (lb !== null) await killChild(lb);
    for (const g of gateways) await g.stop();
    for (const child of children) await killChild(child);
    rmSync(dir, { recursive: true, force: true });
  }
});
