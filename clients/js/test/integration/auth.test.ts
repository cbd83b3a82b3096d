/**
 * Tokens against the real `surge` with JWT on (tokens minted by
 * `surge token`): a forbidden channel, a refresh in place before expiry, a
 * refresh that narrows the channels, and a refused refresh ending in 4001,
 * after which the client fetches a new token, reconnects and resumes.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { connect, type ClientEvents, type SurgeClient, type SurgeError } from "../../src/index.js";
import { mintToken, sleep, Surge, waitFor } from "./harness.js";

const SECRET = "surge-js-integration-secret-0123456789abcdef";
let surge: Surge;

before(async () => {
  surge = await Surge.start({ env: { SURGE_JWT_SECRET: SECRET, SURGE_TOKEN_REFRESH_NOTICE: "2s" } });
});

after(async () => {
  await surge.stop();
});

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

test("a channel the token does not cover is refused to its subscriber only; the others are served", async () => {
  const token = mintToken(SECRET, ["--sub", "alice", "--channels", "odin.token.>", "--ttl", "1h"]);
  const c = connect(surge.url, { WebSocket, token });
  const refused: SurgeError[] = [];
  const trades: number[] = [];
  const global: unknown[] = [];
  const resumed = record(c, "resumed");
  try {
    c.subscribe("odin.global.>", (m) => global.push(m.data), { onError: (e) => refused.push(e) });
    c.subscribe<{ n: number }>("odin.token.*.trade", (m) => trades.push(m.data.n));
    await waitFor("the refusal", () => refused.length === 1);
    assert.equal(refused[0]?.code, "forbidden");
    assert.deepEqual(refused[0]?.channels, ["odin.global.>"]);
    await waitFor("odin.token.*.trade resumed", () => resumed.some((r) => r.channels.includes("odin.token.*.trade")));
    await surge.publish("odin.global.trending", { top: [] });
    await surge.publish("odin.token.A.trade", { n: 1 });
    await waitFor("the trade", () => trades.length === 1);
    assert.deepEqual(global, []);
    assert.deepEqual(c.patterns(), ["odin.token.*.trade"]);
  } finally {
    c.close();
  }
});

test("token_expiring: getToken's new token is sent as refresh and the connection outlives the first token", async () => {
  let calls = 0;
  const c = connect(surge.url, {
    WebSocket,
    getToken: () => {
      calls += 1;
      return mintToken(SECRET, ["--sub", "alice", "--channels", "odin.token.>", "--ttl", "4s"]);
    },
  });
  const closes = record(c, "disconnected");
  const tokens = record(c, "token");
  const got: number[] = [];
  try {
    c.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
    await waitFor("connected", () => c.state.status === "connected");
    const firstExpiry = Date.now() + 4_000;
    await waitFor("a refreshed token", () => tokens.some((t) => t.kind === "refreshed"), 8_000);
    // Without the refresh the server closes with 4001 at the first token's exp.
    await waitFor("the first token's expiry to pass", () => Date.now() > firstExpiry + 1_000, 8_000);
    await surge.publish("odin.token.A.trade", { n: 1 });
    await waitFor("a message after the first token's expiry", () => got.length === 1);
    assert.deepEqual(closes, []);
    assert.ok(calls >= 2);
    assert.ok(tokens.some((t) => t.kind === "expiring"));
  } finally {
    c.close();
  }
});

test("a refresh with narrower channels: the server's unsubscribe reaches the subscriber's onError", async () => {
  let calls = 0;
  const c = connect(surge.url, {
    WebSocket,
    getToken: () => {
      calls += 1;
      return calls === 1
        ? mintToken(SECRET, ["--sub", "alice", "--channels", "odin.>", "--ttl", "3s"])
        : mintToken(SECRET, ["--sub", "alice", "--channels", "odin.token.>", "--ttl", "1h"]);
    },
  });
  const refused: SurgeError[] = [];
  try {
    c.subscribe("odin.global.>", () => undefined, { onError: (e) => refused.push(e) });
    c.subscribe("odin.token.*.trade", () => undefined);
    await waitFor("the narrowing refresh", () => refused.length === 1, 8_000);
    assert.equal(refused[0]?.code, "forbidden");
    assert.deepEqual(c.patterns(), ["odin.token.*.trade"]);
  } finally {
    c.close();
  }
});

test("a refused refresh ends in 4001; the client fetches a new token, reconnects and resumes with nothing lost", async () => {
  const subs: string[] = [];
  const c = connect(surge.url, {
    WebSocket,
    getToken: () => {
      // The second token (the refresh) names another user: refused.
      const sub = subs.length === 1 ? "mallory" : "alice";
      subs.push(sub);
      return mintToken(SECRET, ["--sub", sub, "--channels", "odin.token.>", "--ttl", subs.length === 1 ? "3s" : "1h"]);
    },
  });
  const closes = record(c, "disconnected");
  const errors = record(c, "error");
  const got: number[] = [];
  try {
    const resumed = record(c, "resumed");
    c.subscribe<{ n: number }>("odin.token.*.trade", (m) => got.push(m.data.n));
    await waitFor("the anchor resume", () => resumed.length === 1);
    let n = 0;
    const deadline = Date.now() + 12_000;
    while (!(closes.length > 0 && resumed.length >= 2) && Date.now() < deadline) {
      n += 1;
      await surge.publish(`odin.token.T${n % 3}.trade`, { n });
      await sleep(20);
    }
    for (let i = 0; i < 20; i++) {
      n += 1;
      await surge.publish(`odin.token.T${n % 3}.trade`, { n });
    }
    await waitFor(`all ${n} (have ${got.length})`, () => got.length >= n, 10_000);
    assert.equal(closes[0]?.code, 4001);
    assert.ok(errors.some((e) => e.code === "invalid_token"), "the refused refresh was reported");
    assert.deepEqual(subs.slice(0, 3), ["alice", "mallory", "alice"], "a new token was fetched after the 4001");
    assert.deepEqual(
      got,
      Array.from({ length: n }, (_, i) => i + 1),
    );
  } finally {
    c.close();
  }
});
