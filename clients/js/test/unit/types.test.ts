import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket as NodeWebSocket } from "ws";
import type { WebSocketConstructor } from "../../src/index.js";

// Compile-time checks (tsc fails the build if either stops fitting): the
// browser's WebSocket (DOM lib) and the ws package's are both accepted.
const fromWs: WebSocketConstructor = NodeWebSocket;
const fromDom: WebSocketConstructor | undefined = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;

test("the browser's and ws's WebSocket types fit the WebSocket option", () => {
  assert.equal(typeof fromWs, "function");
  assert.ok(fromDom === undefined || typeof fromDom === "function");
});
