/**
 * The built package as a consumer imports it: the `exports` map resolves
 * `@surge-gateway/client` and `@surge-gateway/client/react` to dist/ (ESM
 * with declarations), which `npm run build` produces.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { PACKAGE_DIR } from "../integration/harness.js";

test("the package's entry points resolve to the built ESM and its declarations", async () => {
  for (const file of ["index.js", "index.d.ts", "react.js", "react.d.ts"]) {
    assert.ok(existsSync(path.join(PACKAGE_DIR, "dist", file)), `dist/${file} (npm run build)`);
  }
  const main: Record<string, unknown> = await import(["@surge-gateway", "client"].join("/"));
  for (const name of ["connect", "SurgeClient", "SurgeError", "backoffDelay", "matches"]) {
    assert.equal(typeof main[name], "function", name);
  }
  const react: Record<string, unknown> = await import(["@surge-gateway", "client", "react"].join("/"));
  for (const name of ["SurgeProvider", "useChannel", "useSurgeState", "useSurgeEvent", "useSurgeClient"]) {
    assert.equal(typeof react[name], "function", name);
  }
});
