import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, matches, patternError, SurgeError } from "../../src/index.js";
import { FakeSocket, ManualTimers } from "./fakes.js";

test("literal, * and > matching", () => {
  const cases: [string, string, boolean][] = [
    ["odin.token.BTC.trade", "odin.token.BTC.trade", true],
    ["odin.token.BTC.trade", "odin.token.ETH.trade", false],
    ["odin.token.*.trade", "odin.token.BTC.trade", true],
    ["odin.token.*.trade", "odin.token.BTC.liquidity", false],
    ["odin.token.*.trade", "odin.token.BTC.trade.x", false],
    ["odin.token.*", "odin.token.BTC", true],
    ["odin.token.*", "odin.token", false],
    ["odin.>", "odin.token.BTC.trade", true],
    ["odin.>", "odin", false],
    ["odin.token.>", "odin.token.BTC", true],
    ["*.global.>", "odin.global.trending", true],
    ["*.global.>", "odin.token.trending", false],
    [">", "odin", true],
    ["odin.token.BTC", "odin.token.BTC.trade", false],
  ];
  for (const [pattern, subject, expected] of cases) {
    assert.equal(matches(pattern, subject), expected, `${pattern} ~ ${subject}`);
  }
});

test("invalid patterns are named with the reason", () => {
  assert.equal(patternError("odin.token.*.trade"), null);
  assert.equal(patternError("odin.>"), null);
  assert.match(patternError("odin..x") ?? "", /empty token at position 2/);
  assert.match(patternError(".odin") ?? "", /empty token/);
  assert.match(patternError("odin.BT*") ?? "", /whole tokens/);
  assert.match(patternError("odin.>.x") ?? "", /last token/);
  assert.match(patternError("odin token") ?? "", /whitespace/);
  assert.match(patternError("") ?? "", /non-empty/);
  assert.match(patternError(Array(17).fill("a").join(".")) ?? "", /16 tokens/);
  assert.match(patternError("a".repeat(257)) ?? "", /256 bytes/);
});

test("subscribe throws on an invalid pattern and subscribes nothing", () => {
  FakeSocket.reset();
  const client = connect("ws://gw/ws", { WebSocket: FakeSocket, timers: new ManualTimers() });
  assert.throws(() => client.subscribe("odin..x", () => undefined), (e: unknown) => e instanceof SurgeError && e.code === "invalid_subject");
  assert.deepEqual(client.patterns(), []);
  client.close();
});
