import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";
import {
  CLIENT_GAVE_UP,
  connect,
  RESUME_FROM_NOW,
  type ClientEvents,
  type ClientOptions,
  type SurgeClient,
  type SurgeMessage,
} from "../../src/index.js";
import { FakeSocket, flush, ManualTimers } from "./fakes.js";

let timers: ManualTimers;

beforeEach(() => {
  FakeSocket.reset();
  timers = new ManualTimers();
});

function client(options: ClientOptions = {}, urls: string | string[] = "ws://gw-a/ws"): SurgeClient {
  return connect(urls, { WebSocket: FakeSocket, timers, random: () => 0.5, ...options });
}

function record<K extends keyof ClientEvents>(c: SurgeClient, event: K): ClientEvents[K][] {
  const out: ClientEvents[K][] = [];
  c.on(event, (e) => out.push(e));
  return out;
}

/** Connects, subscribes `patterns` and completes the anchoring resume at `lastSseq`. */
async function connected(c: SurgeClient, lastSseq: number, epoch = "e-1"): Promise<FakeSocket> {
  const ws = FakeSocket.last();
  ws.open(epoch);
  await flush();
  const resume = ws.lastRequest("resume");
  ws.receive({ type: "resumed", id: resume["id"], channels: resume["channels"], last_sseq: lastSseq, epoch });
  return ws;
}

test("the first subscription of a connection anchors with a resume that recovers nothing", async () => {
  const c = client();
  const got: number[] = [];
  c.subscribe("odin.token.*.trade", (m) => got.push(m.sseq));
  const ws = FakeSocket.last();
  ws.open("e-1");
  await flush();
  const resume = ws.lastRequest("resume");
  assert.deepEqual(resume["channels"], ["odin.token.*.trade"]);
  assert.equal(resume["since_sseq"], RESUME_FROM_NOW);
  assert.equal(resume["epoch"], undefined);
  ws.receive({ type: "resumed", id: resume["id"], channels: ["odin.token.*.trade"], last_sseq: 40, epoch: "e-1" });
  assert.deepEqual(c.position(), { sseq: 40, epoch: "e-1" });
  ws.message(1, 42, "odin.token.BTC.trade", { p: 1 });
  assert.deepEqual(got, [42]);
  assert.deepEqual(c.position(), { sseq: 42, epoch: "e-1" });
  c.close();
});

test("after a reconnect: resume from the last processed sseq and epoch; recovered and held live messages arrive once, in order", async () => {
  const c = client();
  const got: { sseq: number; recovered: boolean }[] = [];
  c.subscribe("odin.token.*.trade", (m) => got.push({ sseq: m.sseq, recovered: m.recovered }));
  const first = await connected(c, 10);
  first.message(1, 11, "odin.token.BTC.trade", 1);
  first.message(2, 13, "odin.token.ETH.trade", 2);
  first.serverClose(1001, "server shutting down");
  // Backoff: attempt 0 with random 0 waits half the 250 ms ceiling.
  assert.deepEqual(timers.delays(), [125]);
  timers.advance(125);
  const second = FakeSocket.last();
  assert.notEqual(second, first);
  second.open("e-1");
  await flush();
  const resume = second.lastRequest("resume");
  assert.deepEqual(resume, { type: "resume", channels: ["odin.token.*.trade"], since_sseq: 13, epoch: "e-1", id: resume["id"] });
  // A live frame before `resumed` (a second resume after broker_unavailable would do this) is held…
  second.message(1, 14, "odin.token.BTC.trade", 3, { recovered: true });
  second.message(2, 17, "odin.token.BTC.trade", 5);
  second.message(3, 15, "odin.token.SOL.trade", 4, { recovered: true });
  // …and a recovered duplicate of something processed is dropped.
  second.message(4, 13, "odin.token.ETH.trade", 2, { recovered: true });
  assert.deepEqual(got.map((g) => g.sseq), [11, 13, 14, 15]);
  second.receive({ type: "resumed", id: resume["id"], channels: ["odin.token.*.trade"], last_sseq: 16, epoch: "e-1" });
  second.message(5, 18, "odin.token.BTC.trade", 6);
  assert.deepEqual(
    got.map((g) => g.sseq),
    [11, 13, 14, 15, 17, 18],
  );
  assert.deepEqual(
    got.map((g) => g.recovered),
    [false, false, true, true, false, false],
  );
  assert.equal(c.stats.duplicates, 1);
  c.close();
});

test("a live seq gap asks for a replay and delivers in seq order once it is filled", async () => {
  const c = client();
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.seq));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", 1);
  ws.message(4, 4, "odin.a", 4); // 2 and 3 never arrived
  const replay = ws.lastRequest("replay");
  assert.equal(replay["from_seq"], 2);
  assert.equal(replay["to_seq"], 3);
  ws.message(5, 5, "odin.a", 5); // held behind the gap
  assert.deepEqual(got, [1]);
  ws.message(2, 2, "odin.a", 2, { replayed: true });
  ws.message(3, 3, "odin.a", 3, { replayed: true });
  ws.receive({ type: "replay_done", id: replay["id"], from_seq: 2, to_seq: 3 });
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  ws.message(6, 6, "odin.a", 6);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  c.close();
});

test("a replay that cannot return everything surfaces a gap with the count lost", async () => {
  const c = client();
  const gaps = record(c, "gap");
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.seq));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", 1);
  ws.message(5, 5, "odin.a", 5);
  const replay = ws.lastRequest("replay");
  ws.receive({ type: "replay_gap", id: replay["id"], from_seq: 2, to_seq: 4, oldest_seq: 4 });
  ws.message(4, 4, "odin.a", 4, { replayed: true });
  ws.receive({ type: "replay_done", id: replay["id"], from_seq: 2, to_seq: 4 });
  assert.deepEqual(got, [1, 4, 5]);
  assert.deepEqual(gaps, [{ kind: "replay", fromSeq: 2, toSeq: 4, lost: 2 }]);
  c.close();
});

test("seqs the server withheld from a replay (a revoked channel) are not counted as lost", async () => {
  const c = client();
  const gaps = record(c, "gap");
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.seq));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", 1);
  ws.message(4, 4, "odin.a", 4);
  const replay = ws.lastRequest("replay");
  ws.message(2, 2, "odin.a", 2, { replayed: true });
  ws.receive({ type: "replay_done", id: replay["id"], from_seq: 2, to_seq: 3, withheld: [3] });
  assert.deepEqual(got, [1, 2, 4]);
  assert.deepEqual(gaps, []);
  c.close();
});

test("a duplicate seq on a live connection is dropped", async () => {
  const c = client();
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.seq));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", 1);
  ws.message(1, 1, "odin.a", 1);
  ws.message(2, 2, "odin.a", 2);
  assert.deepEqual(got, [1, 2]);
  c.close();
});

test("resume_gap (retention) and an epoch change surface as gap events; a new epoch re-anchors", async () => {
  const c = client();
  const gaps = record(c, "gap");
  c.subscribe("odin.>", () => undefined);
  const first = await connected(c, 100);
  first.serverClose(1006);
  timers.advance(10_000);
  const second = FakeSocket.last();
  second.open("e-1");
  await flush();
  let resume = second.lastRequest("resume");
  second.receive({ type: "resume_gap", id: resume["id"], oldest_sseq: 150 });
  second.receive({ type: "resumed", id: resume["id"], channels: ["odin.>"], last_sseq: 200, epoch: "e-1" });
  assert.deepEqual(gaps, [{ kind: "retention", sinceSseq: 100, oldestSseq: 150 }]);
  second.serverClose(1006);
  timers.advance(10_000);
  const third = FakeSocket.last();
  third.open("e-2");
  await flush();
  resume = third.lastRequest("resume");
  assert.equal(resume["epoch"], "e-1");
  assert.equal(resume["since_sseq"], 200);
  third.receive({ type: "resume_gap", id: resume["id"], oldest_sseq: 1, epoch_changed: true });
  third.receive({ type: "resumed", id: resume["id"], channels: ["odin.>"], last_sseq: 7, epoch: "e-2" });
  assert.deepEqual(gaps[1], { kind: "epoch_changed", previousEpoch: "e-1", oldestSseq: 1 });
  assert.deepEqual(c.position(), { sseq: 7, epoch: "e-2" });
  assert.equal(c.state.epoch, "e-2");
  c.close();
});

test("a live sseq going backwards is a stream reset, delivered and reported", async () => {
  const c = client();
  const gaps = record(c, "gap");
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.sseq));
  const ws = await connected(c, 500);
  ws.message(1, 501, "odin.a", 1);
  ws.message(2, 1, "odin.a", 2);
  ws.message(3, 2, "odin.a", 3);
  assert.deepEqual(got, [501, 1, 2]);
  assert.deepEqual(gaps, [{ kind: "stream_reset", previousSseq: 501, sseq: 1 }]);
  c.close();
});

test("dropped counts and throttle notices become events", async () => {
  const c = client();
  const dropped = record(c, "dropped");
  const throttles = record(c, "throttle");
  c.subscribe("odin.>", () => undefined);
  const ws = await connected(c, 0);
  ws.receive({ type: "throttle_update", level: 1, rate_percent: 75, message: "slightly slow" });
  ws.message(1, 9, "odin.a", 1, { dropped: 3 });
  assert.deepEqual(dropped, [{ count: 3, seq: 1, sseq: 9, subject: "odin.a" }]);
  assert.deepEqual(throttles, [{ level: 1, ratePercent: 75, message: "slightly slow" }]);
  assert.deepEqual(c.state.throttle, { level: 1, ratePercent: 75, message: "slightly slow" });
  c.close();
});

test("every matching handler gets a message once; the channel goes when its last handler goes", async () => {
  const c = client();
  const a: string[] = [];
  const b: string[] = [];
  const d: string[] = [];
  const subA = c.subscribe("odin.token.*.trade", (m) => a.push(m.subject));
  const subA2 = c.subscribe("odin.token.*.trade", (m) => a.push(`again ${m.subject}`));
  c.subscribe("odin.token.BTC.>", (m) => b.push(m.subject));
  c.subscribe("odin.global.trending", (m) => d.push(m.subject));
  const ws = await connected(c, 0);
  assert.deepEqual(ws.lastRequest("resume")["channels"], ["odin.token.*.trade", "odin.token.BTC.>", "odin.global.trending"]);
  ws.message(1, 1, "odin.token.BTC.trade", {});
  ws.message(2, 2, "odin.token.BTC.liquidity", {});
  ws.message(3, 3, "odin.global.trending", {});
  assert.deepEqual(a, ["odin.token.BTC.trade", "again odin.token.BTC.trade"]);
  assert.deepEqual(b, ["odin.token.BTC.trade", "odin.token.BTC.liquidity"]);
  assert.deepEqual(d, ["odin.global.trending"]);
  subA.unsubscribe();
  await flush();
  assert.equal(ws.requests("unsubscribe").length, 0, "another handler still uses the channel");
  subA2.unsubscribe();
  subA2.unsubscribe();
  await flush();
  assert.deepEqual(ws.lastRequest("unsubscribe")["channels"], ["odin.token.*.trade"]);
  ws.message(4, 4, "odin.token.ETH.trade", {});
  assert.equal(a.length, 2);
  c.close();
});

test("subscribe, unsubscribe, subscribe in one tick (StrictMode) sends one request", async () => {
  const c = client();
  const ws = FakeSocket.last();
  ws.open();
  const s1 = c.subscribe("odin.a", () => undefined);
  s1.unsubscribe();
  c.subscribe("odin.a", () => undefined);
  await flush();
  assert.equal(ws.requests("resume").length, 1);
  assert.equal(ws.requests("unsubscribe").length, 0);
  assert.equal(c.handlerCount("odin.a"), 1);
  c.close();
});

test("a handler that throws is reported and does not stop the others", async () => {
  const c = client();
  const errors = record(c, "error");
  const got: number[] = [];
  c.subscribe("odin.a", () => {
    throw new Error("boom");
  });
  c.subscribe("odin.>", (m) => got.push(m.sseq));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", 1);
  assert.deepEqual(got, [1]);
  assert.equal(errors[0]?.code, "handler_error");
  c.close();
});

test("a subscription added mid-connection does not get recovered messages older than itself", async () => {
  const c = client();
  const old: number[] = [];
  const added: number[] = [];
  c.subscribe("odin.a", (m) => old.push(m.sseq));
  const first = await connected(c, 10);
  first.message(1, 11, "odin.a", 1);
  c.subscribe("odin.b", (m) => added.push(m.sseq));
  await flush();
  const fresh = first.lastRequest("resume");
  assert.deepEqual(fresh["channels"], ["odin.b"]);
  assert.equal(fresh["since_sseq"], RESUME_FROM_NOW);
  first.receive({ type: "resumed", id: fresh["id"], channels: ["odin.b"], last_sseq: 20, epoch: "e-1" });
  first.serverClose(1006);
  timers.advance(10_000);
  const second = FakeSocket.last();
  second.open("e-1");
  await flush();
  const resume = second.lastRequest("resume");
  assert.deepEqual(resume["channels"], ["odin.a", "odin.b"]);
  assert.equal(resume["since_sseq"], 11);
  second.message(1, 15, "odin.b", "before odin.b was subscribed", { recovered: true });
  second.message(2, 21, "odin.b", "after", { recovered: true });
  second.message(3, 22, "odin.a", "after", { recovered: true });
  second.receive({ type: "resumed", id: resume["id"], channels: resume["channels"], last_sseq: 22, epoch: "e-1" });
  assert.deepEqual(added, [21]);
  assert.deepEqual(old, [11, 22]);
  c.close();
});

test("forbidden in a resume of several channels: each is tried alone, the refused one reported, the rest resumed", async () => {
  const c = client();
  const refused: string[] = [];
  c.subscribe("odin.a", () => undefined);
  c.subscribe("odin.secret", () => undefined, { onError: (e) => refused.push(`${e.code} ${e.channels.join()}`) });
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  const resume = ws.lastRequest("resume");
  ws.receive({ type: "error", id: resume["id"], code: "forbidden", message: "channel odin.secret is not covered" });
  const probes = ws.requests("subscribe");
  assert.deepEqual(
    probes.map((p) => p["channels"]),
    [["odin.a"], ["odin.secret"]],
  );
  ws.receive({ type: "subscribed", id: probes[0]?.["id"], channels: ["odin.a"] });
  ws.receive({ type: "error", id: probes[1]?.["id"], code: "forbidden", message: "no" });
  const again = ws.lastRequest("resume");
  assert.notEqual(again["id"], resume["id"]);
  assert.deepEqual(again["channels"], ["odin.a"]);
  assert.deepEqual(refused, ["forbidden odin.secret"]);
  assert.deepEqual(c.patterns(), ["odin.a"]);
  c.close();
});

test("heartbeat: a ping after the welcome's ping interval of silence, a reconnect when nothing answers", async () => {
  const c = client({ heartbeat: { timeoutMs: 2_000 } });
  const closes = record(c, "disconnected");
  const reconnects = record(c, "reconnecting");
  const ws = FakeSocket.last();
  ws.open("e-1", { ping_interval_ms: 5_000 });
  timers.advance(4_999);
  assert.equal(ws.requests("ping").length, 0);
  timers.advance(1);
  assert.equal(ws.requests("ping").length, 1);
  ws.receive({ type: "pong" });
  timers.advance(5_000);
  assert.equal(ws.requests("ping").length, 2, "a frame restarts the interval");
  timers.advance(1_999);
  assert.equal(closes.length, 0);
  timers.advance(1);
  assert.equal(closes.length, 1);
  assert.equal(closes[0]?.code, CLIENT_GAVE_UP);
  assert.match(closes[0]?.reason ?? "", /heartbeat timeout/);
  assert.equal(ws.closedWith?.code, CLIENT_GAVE_UP);
  assert.equal(reconnects[0]?.cause, "client_timeout");
  c.close();
});

/** An EventTarget that counts its listeners, to see them removed. */
class Target extends EventTarget {
  listeners = 0;
  override addEventListener(type: string, listener: () => void): void {
    this.listeners += 1;
    super.addEventListener(type, listener);
  }
  override removeEventListener(type: string, listener: () => void): void {
    this.listeners -= 1;
    super.removeEventListener(type, listener);
  }
  fire(type: string): void {
    this.dispatchEvent(new Event(type));
  }
}

test("lifecycle: online cuts a backoff wait short to a first retry's delay; close() removes the listeners", async () => {
  const net = new Target();
  const c = client({ lifecycle: { online: net } });
  assert.equal(net.listeners, 1);
  const reconnecting = record(c, "reconnecting");
  // Four refused attempts: the wait has grown to half of 2,000 ms.
  for (let i = 0; i < 4; i++) {
    FakeSocket.last().serverClose(1006);
    if (i < 3) timers.advance(timers.delays()[0] ?? 0);
  }
  assert.deepEqual(timers.delays(), [1_000]);
  const sockets = FakeSocket.all.length;
  net.fire("online");
  assert.deepEqual(timers.delays(), [125]);
  assert.deepEqual(reconnecting[reconnecting.length - 1], { url: "ws://gw-a/ws", delayMs: 125, attempt: 3, cause: "online" });
  assert.equal(c.state.retryInMs, 125);
  // A second online within the shorter wait changes nothing.
  net.fire("online");
  assert.equal(reconnecting.length, 5);
  timers.advance(125);
  assert.equal(FakeSocket.all.length, sockets + 1, "reconnected");
  c.close();
  assert.equal(net.listeners, 0);
});

test("lifecycle: a wait the gateway asked for (1013, with or without a retry hint) is not cut short", async () => {
  const net = new Target();
  const c = client({ lifecycle: { online: net } });
  const reconnecting = record(c, "reconnecting");
  const ws = FakeSocket.last();
  ws.open();
  ws.serverClose(1013, "overloaded, retry_after_ms=5000");
  assert.deepEqual(timers.delays(), [5_000]);
  net.fire("online");
  assert.deepEqual(timers.delays(), [5_000]);
  // Without a hint the wait is the backoff's, and still the gateway's request.
  timers.advance(5_000);
  const next = FakeSocket.last();
  next.open();
  next.serverClose(1013, "overloaded");
  const wait = timers.delays();
  net.fire("online");
  assert.deepEqual(timers.delays(), wait);
  assert.deepEqual(
    reconnecting.map((r) => r.cause),
    ["try_again_later", "try_again_later"],
  );
  c.close();
});

test("lifecycle: the page visible again or the network back checks an open connection with a ping at once", async () => {
  let visible = false;
  const doc = new Target();
  const net = new Target();
  const c = client({ heartbeat: { timeoutMs: 2_000 }, lifecycle: { online: net, visibility: { target: doc, visible: () => visible } } });
  const closes = record(c, "disconnected");
  const ws = FakeSocket.last();
  ws.open();
  doc.fire("visibilitychange");
  assert.equal(ws.requests("ping").length, 0, "hidden: nothing to check");
  visible = true;
  doc.fire("visibilitychange");
  assert.equal(ws.requests("ping").length, 1);
  net.fire("online");
  assert.equal(ws.requests("ping").length, 1, "one ping out at a time");
  ws.receive({ type: "pong" });
  timers.advance(2_000);
  assert.equal(closes.length, 0, "answered: the connection stays");
  net.fire("online");
  assert.equal(ws.requests("ping").length, 2);
  timers.advance(1_999);
  assert.equal(closes.length, 0);
  timers.advance(1);
  assert.equal(closes.length, 1, "no answer within the heartbeat timeout: given up");
  assert.equal(closes[0]?.code, CLIENT_GAVE_UP);
  assert.match(closes[0]?.reason ?? "", /heartbeat timeout/);
  c.close();
  assert.equal(doc.listeners + net.listeners, 0);
});

test("lifecycle: window and document by default, where they exist; false listens to neither", () => {
  const g = globalThis as { window?: unknown; document?: unknown };
  const win = new Target();
  const doc = new Target();
  g.window = win;
  g.document = doc;
  try {
    const c = client();
    assert.deepEqual([win.listeners, doc.listeners], [1, 1]);
    c.close();
    assert.deepEqual([win.listeners, doc.listeners], [0, 0]);
    const off = client({ lifecycle: false });
    assert.deepEqual([win.listeners, doc.listeners], [0, 0]);
    off.close();
  } finally {
    delete g.window;
    delete g.document;
  }
});

test("refused before the welcome: backoff grows and the next gateway is tried in order", async () => {
  const c = client({}, ["ws://gw-a/ws", "ws://gw-b/ws"]);
  const reconnects = record(c, "reconnecting");
  const urls: string[] = [];
  for (let i = 0; i < 4; i++) {
    const ws = FakeSocket.last();
    urls.push(ws.url);
    ws.serverClose(1006);
    timers.advance(reconnects[reconnects.length - 1]?.delayMs ?? 0);
  }
  assert.deepEqual(urls, ["ws://gw-a/ws", "ws://gw-b/ws", "ws://gw-a/ws", "ws://gw-b/ws"]);
  assert.deepEqual(
    reconnects.map((r) => [r.cause, r.delayMs]),
    [
      ["refused", 125],
      ["refused", 250],
      ["refused", 500],
      ["refused", 1000],
    ],
  );
  FakeSocket.last().open();
  FakeSocket.last().serverClose(1001);
  // Reaching welcome resets the backoff; a lost connection also moves on to the next gateway.
  assert.deepEqual(reconnects[reconnects.length - 1], { url: "ws://gw-b/ws", delayMs: 125, attempt: 0, cause: "closed" });
  c.close();
});

test("a connection that never gets its welcome is abandoned after the connect timeout", () => {
  const c = client({ connectTimeoutMs: 3_000 });
  const reconnects = record(c, "reconnecting");
  timers.advance(2_999);
  assert.equal(reconnects.length, 0);
  timers.advance(1);
  assert.equal(reconnects[0]?.cause, "refused");
  c.close();
});

test("1013 keeps backing off and honours a retry hint", () => {
  const c = client();
  const reconnects = record(c, "reconnecting");
  FakeSocket.last().open();
  FakeSocket.last().serverClose(1013, "overloaded; retry after 3s");
  assert.equal(reconnects[0]?.cause, "try_again_later");
  assert.equal(reconnects[0]?.delayMs, 3_000);
  timers.advance(3_000);
  FakeSocket.last().open();
  FakeSocket.last().serverClose(1013, "too many live messages during resume; reconnect and resume again");
  // Not reset by the welcome: the second attempt in a row, 500 ms ceiling, random 0.
  assert.equal(reconnects[1]?.attempt, 1);
  assert.equal(reconnects[1]?.delayMs, 250);
  c.close();
});

test("getToken: at connect, on token_expiring as refresh without reconnecting, and after 4001 before reconnecting", async () => {
  let n = 0;
  const c = client({ getToken: () => `tok-${++n}` });
  const tokens = record(c, "token");
  await flush();
  const first = FakeSocket.last();
  assert.equal(first.url, "ws://gw-a/ws?token=tok-1");
  first.open();
  first.receive({ type: "token_expiring", expires_in_ms: 30_000 });
  await flush();
  assert.equal(first.lastRequest("refresh")["token"], "tok-2");
  first.receive({ type: "refreshed", id: first.lastRequest("refresh")["id"], expires_at: 1_800_000_000_000 });
  assert.deepEqual(tokens, [
    { kind: "expiring", expiresInMs: 30_000 },
    { kind: "refreshed", expiresAt: 1_800_000_000_000 },
  ]);
  assert.equal(FakeSocket.all.length, 1, "refreshed in place");
  first.serverClose(1006);
  timers.advance(10_000);
  await flush();
  assert.equal(FakeSocket.last().url, "ws://gw-a/ws?token=tok-2", "a valid cached token is reused");
  FakeSocket.last().open();
  FakeSocket.last().serverClose(4001, "token expired");
  timers.advance(10_000);
  await flush();
  assert.equal(FakeSocket.last().url, "ws://gw-a/ws?token=tok-3", "a new token after 4001");
  c.close();
});

test("a cached JWT whose exp has passed is replaced before connecting", async () => {
  const jwt = (exp: number): string =>
    `h.${Buffer.from(JSON.stringify({ sub: "a", exp })).toString("base64url")}.s`;
  const tokens = [jwt(timers.now() / 1000 + 60), jwt(timers.now() / 1000 + 3600)];
  let i = 0;
  const c = client({ getToken: () => tokens[i++] ?? "none", heartbeat: false });
  await flush();
  FakeSocket.last().open();
  timers.advance(61_000);
  FakeSocket.last().serverClose(1006);
  timers.advance(125);
  await flush();
  assert.equal(i, 2);
  assert.ok(FakeSocket.last().url.endsWith(encodeURIComponent(tokens[1] ?? "")));
  c.close();
});

test("a fixed token and a 4001 close: no reconnect, an error says why", () => {
  const c = client({ token: "static" });
  const errors = record(c, "error");
  return flush().then(() => {
    FakeSocket.last().open();
    FakeSocket.last().serverClose(4001, "token expired");
    assert.equal(c.state.status, "closed");
    assert.equal(errors[0]?.code, "token_expired");
    timers.advance(60_000);
    assert.equal(FakeSocket.all.length, 1);
  });
});

test("payload encodings: JSON as is, text as a string, base64 as bytes", async () => {
  const c = client();
  const got: SurgeMessage[] = [];
  c.subscribe("odin.>", (m) => got.push(m));
  const ws = await connected(c, 0);
  ws.message(1, 1, "odin.a", { x: 1 });
  ws.message(2, 2, "odin.a", "hi", { encoding: "text" });
  ws.message(3, 3, "odin.a", "AP8=", { encoding: "base64" });
  assert.deepEqual(got[0]?.data, { x: 1 });
  assert.equal(got[1]?.data, "hi");
  assert.equal(got[1]?.encoding, "text");
  assert.deepEqual(got[2]?.data, new Uint8Array([0, 255]));
  c.close();
});

test("state events: connecting, connected, reconnecting with the delay, closed", async () => {
  const c = client({ autoConnect: false });
  const states = record(c, "state");
  assert.equal(c.state.status, "idle");
  assert.equal(FakeSocket.all.length, 0);
  c.connect();
  FakeSocket.last().open();
  FakeSocket.last().serverClose(1006);
  c.close();
  const seq = states.map((s) => s.status).filter((s, i, all) => s !== all[i - 1]);
  assert.deepEqual(seq, ["connecting", "connected", "reconnecting", "closed"]);
  assert.equal(states.find((s) => s.status === "reconnecting")?.retryInMs, 125);
});

test("a handler removed and added again in one tick (a remount) keeps the channel's recovery", async () => {
  const c = client();
  const got: number[] = [];
  const first = c.subscribe("odin.a", (m) => got.push(m.sseq));
  const ws = await connected(c, 10);
  ws.message(1, 11, "odin.a", 1);
  first.unsubscribe();
  c.subscribe("odin.a", (m) => got.push(m.sseq));
  await flush();
  assert.equal(ws.requests("resume").length, 1);
  assert.equal(ws.requests("unsubscribe").length, 0);
  ws.serverClose(1006);
  timers.advance(10_000);
  const second = FakeSocket.last();
  second.open();
  await flush();
  const resume = second.lastRequest("resume");
  assert.equal(resume["since_sseq"], 11, "resumed from the last sseq, not from now");
  second.message(1, 12, "odin.a", 2, { recovered: true });
  assert.deepEqual(got, [11, 12]);
  c.close();
});

test("random failover: each retry goes to another gateway than the one that failed", () => {
  const draws = [0.0, 0.9, 0.1, 0.6, 0.3, 0.99];
  let i = 0;
  const c = connect(["ws://a/ws", "ws://b/ws", "ws://c/ws"], {
    WebSocket: FakeSocket,
    timers,
    failover: "random",
    random: () => draws[i++ % draws.length] ?? 0,
  });
  const urls: string[] = [];
  for (let n = 0; n < 6; n++) {
    const ws = FakeSocket.last();
    urls.push(ws.url);
    ws.serverClose(1006);
    timers.advance(10_000);
  }
  for (let n = 1; n < urls.length; n++) assert.notEqual(urls[n], urls[n - 1], `attempt ${n} after ${urls[n - 1]}`);
  assert.ok(new Set(urls).size >= 2);
  c.close();
});

test("resume refused with broker_unavailable: live messages wait, the resume is retried, everything arrives once, in order", async () => {
  const c = client();
  const errors = record(c, "error");
  const got: number[] = [];
  c.subscribe("odin.>", (m) => got.push(m.sseq));
  const first = await connected(c, 10);
  first.message(1, 11, "odin.a", 1);
  first.serverClose(1006);
  timers.advance(10_000);
  const second = FakeSocket.last();
  second.open();
  await flush();
  const resume = second.lastRequest("resume");
  second.receive({ type: "error", id: resume["id"], code: "broker_unavailable", message: "resume could not read the stream" });
  assert.equal(errors[0]?.code, "broker_unavailable");
  // The channels stay subscribed: live messages flow, and wait.
  second.message(1, 14, "odin.a", 4);
  second.message(2, 15, "odin.a", 5);
  assert.deepEqual(got, [11]);
  timers.advance(10_000);
  const retry = second.lastRequest("resume");
  assert.notEqual(retry["id"], resume["id"]);
  assert.equal(retry["since_sseq"], 11);
  second.message(3, 12, "odin.a", 2, { recovered: true });
  second.message(4, 13, "odin.a", 3, { recovered: true });
  second.message(5, 14, "odin.a", 4, { recovered: true });
  second.message(6, 15, "odin.a", 5, { recovered: true });
  second.receive({ type: "resumed", id: retry["id"], channels: ["odin.>"], last_sseq: 15, epoch: "e-1" });
  second.message(7, 16, "odin.a", 6);
  assert.deepEqual(got, [11, 12, 13, 14, 15, 16]);
  c.close();
});

test("a resume refused for its only channel: the channel is reported and removed, the connection stays", async () => {
  const c = client();
  const refused: string[] = [];
  const got: number[] = [];
  c.subscribe("odin.a", (m) => got.push(m.sseq), { onError: (e) => refused.push(e.code) });
  const first = await connected(c, 10);
  first.serverClose(1006);
  timers.advance(10_000);
  const second = FakeSocket.last();
  second.open();
  await flush();
  const resume = second.lastRequest("resume");
  second.receive({ type: "error", id: resume["id"], code: "forbidden", message: "not covered" });
  assert.deepEqual(refused, ["forbidden"]);
  assert.deepEqual(c.patterns(), []);
  assert.equal(c.state.status, "connected");
  c.close();
});
