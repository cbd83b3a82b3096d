/**
 * The React bindings with react-test-renderer (React's development build,
 * so StrictMode mounts, unmounts and mounts every effect again) and the
 * in-memory WebSocket.
 */
import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";
import { createElement, StrictMode, useState, type ReactElement, type ReactNode } from "react";
import TestRenderer, { act } from "react-test-renderer";
import { connect, type SurgeClient } from "../../src/index.js";
import { SurgeProvider, useChannel, useSurgeEvent, useSurgeState } from "../../src/react.js";
import { FakeSocket, flush, ManualTimers } from "./fakes.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

let timers: ManualTimers;

beforeEach(() => {
  FakeSocket.reset();
  timers = new ManualTimers();
});

function client(): SurgeClient {
  return connect("ws://gw/ws", { WebSocket: FakeSocket, timers, random: () => 0 });
}

function Prices(props: { symbol: string }): ReactNode {
  const [price, setPrice] = useState<number | null>(null);
  useChannel<{ price: number }>(`odin.token.${props.symbol}.trade`, (m) => setPrice(m.data.price));
  return createElement("span", null, `${props.symbol} ${price ?? "-"}`);
}

function Status(): ReactNode {
  const state = useSurgeState();
  return createElement("b", null, state.status);
}

function tree(c: SurgeClient, children: ReactNode): ReactElement {
  return createElement(StrictMode, null, createElement(SurgeProvider, { client: c }, children));
}

test("useChannel under StrictMode: one handler, one resume on the wire, updates rendered; unmount unsubscribes", async () => {
  const c = client();
  const ws = FakeSocket.last();
  ws.open();
  let renderer: TestRenderer.ReactTestRenderer | undefined;
  await act(async () => {
    renderer = TestRenderer.create(tree(c, createElement(Prices, { symbol: "BTC" })));
  });
  await flush();
  assert.equal(c.handlerCount("odin.token.BTC.trade"), 1, "StrictMode's second mount leaves one handler");
  assert.equal(ws.requests("resume").length, 1);
  assert.equal(ws.requests("unsubscribe").length, 0);
  const resume = ws.lastRequest("resume");
  await act(async () => {
    ws.receive({ type: "resumed", id: resume["id"], channels: resume["channels"], last_sseq: 0, epoch: "e-1" });
    ws.message(1, 1, "odin.token.BTC.trade", { price: 64000 });
  });
  assert.equal(JSON.stringify(renderer?.toJSON()), JSON.stringify({ type: "span", props: {}, children: ["BTC 64000"] }));
  await act(async () => renderer?.unmount());
  await flush();
  assert.equal(c.handlerCount("odin.token.BTC.trade"), 0);
  assert.deepEqual(ws.lastRequest("unsubscribe")["channels"], ["odin.token.BTC.trade"]);
  c.close();
});

test("changing the pattern moves the subscription; mounting and unmounting many leaves no handler behind", async () => {
  const c = client();
  FakeSocket.last().open();
  let renderer: TestRenderer.ReactTestRenderer | undefined;
  await act(async () => {
    renderer = TestRenderer.create(tree(c, createElement(Prices, { symbol: "BTC" })));
  });
  await act(async () => renderer?.update(tree(c, createElement(Prices, { symbol: "ETH" }))));
  assert.equal(c.handlerCount("odin.token.BTC.trade"), 0);
  assert.equal(c.handlerCount("odin.token.ETH.trade"), 1);
  for (let i = 0; i < 20; i++) {
    const symbols = i % 2 === 0 ? ["A", "B", "C"] : ["B"];
    await act(async () =>
      renderer?.update(tree(c, symbols.map((s) => createElement(Prices, { symbol: s, key: s })))),
    );
  }
  assert.deepEqual(c.patterns(), ["odin.token.B.trade"]);
  assert.equal(c.handlerCount("odin.token.B.trade"), 1);
  await act(async () => renderer?.unmount());
  assert.deepEqual(c.patterns(), []);
  c.close();
});

test("useSurgeState follows the connection; useSurgeEvent delivers events while mounted", async () => {
  const c = client();
  const gaps: string[] = [];
  function Gaps(): ReactNode {
    useSurgeEvent("gap", (g) => gaps.push(g.kind));
    return null;
  }
  let renderer: TestRenderer.ReactTestRenderer | undefined;
  await act(async () => {
    renderer = TestRenderer.create(tree(c, [createElement(Status, { key: "s" }), createElement(Gaps, { key: "g" })]));
  });
  assert.equal(JSON.stringify(renderer?.toJSON()), JSON.stringify({ type: "b", props: {}, children: ["connecting"] }));
  const ws = FakeSocket.last();
  await act(async () => ws.open());
  assert.equal(JSON.stringify(renderer?.toJSON()), JSON.stringify({ type: "b", props: {}, children: ["connected"] }));
  await act(async () => ws.serverClose(1006));
  assert.equal(JSON.stringify(renderer?.toJSON()), JSON.stringify({ type: "b", props: {}, children: ["reconnecting"] }));
  c.subscribe("odin.>", () => undefined);
  await act(async () => timers.advance(1_000));
  const second = FakeSocket.last();
  await act(async () => {
    second.open();
    await flush();
  });
  const resume = second.lastRequest("resume");
  await act(async () => {
    second.receive({ type: "resumed", id: resume["id"], channels: ["odin.>"], last_sseq: 5, epoch: "e-1" });
    second.message(1, 6, "odin.a", 1);
    second.message(2, 3, "odin.a", 2);
  });
  assert.deepEqual(gaps, ["stream_reset"]);
  await act(async () => renderer?.unmount());
  second.message(3, 1, "odin.a", 3);
  assert.deepEqual(gaps, ["stream_reset"], "no listener after unmount");
  c.close();
});
