/**
 * End to end in headless Chromium (Debian's package, driven by
 * playwright-core): the example app against a real surge reading a real
 * NATS stream fed by `surge feed`. The page loads and shows live data; the
 * gateway is killed and restarted; the page reconnects and resumes, and
 * the feed's trade numbers show no gap and no duplicate; the browser's
 * `online` event makes the client check its connection with a ping. A
 * screenshot is saved to test-output/sdk-example.png.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import type { SurgeClient } from "../../src/index.js";
import {
  CHROMIUM,
  CHROMIUM_FLAGS,
  freePort,
  killChild,
  Nats,
  PACKAGE_DIR,
  sleep,
  spawnTracked,
  Surge,
  surgeBinary,
} from "../integration/harness.js";


interface Check {
  trades: number;
  silentGaps: number;
  duplicates: number;
  announcedGaps: string[];
  recovered: number;
  reconnects: number;
}

test("the example app shows live data and survives a gateway restart with no gap", { timeout: 120_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium; scripts/test-js does)`);
  const nats = await Nats.start();
  const surge = await Surge.start({ env: { SURGE_NATS_URL: nats.url } });
  const feed = spawnTracked(surgeBinary(), ["feed", "--rate", "50"], {
    env: { PATH: process.env["PATH"] ?? "", SURGE_NATS_URL: nats.url },
    stdio: "ignore",
  });
  const webPort = await freePort();
  const web = spawnTracked(process.execPath, [path.join(PACKAGE_DIR, "examples", "serve.mjs"), "--no-feed", "--port", String(webPort)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    web.stdout?.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("example app at")) resolve();
    });
    web.once("exit", (code) => reject(new Error(`example server exited with ${code}`)));
  });
  const profile = mkdtempSync(path.join(tmpdir(), "surge-js-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 720 },
    args: [
      ...CHROMIUM_FLAGS,
    ],
  });
  try {
    const page = browser.pages()[0] ?? (await browser.newPage());
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    // Every `ping` the client sends, on any of its sockets.
    const pings: number[] = [];
    page.on("websocket", (ws) => {
      ws.on("framesent", (frame) => {
        if (typeof frame.payload === "string" && frame.payload.includes('"type":"ping"')) pings.push(Date.now());
      });
    });
    await page.goto(`http://127.0.0.1:${webPort}/?gateway=${encodeURIComponent(surge.url)}`);
    const check = (): Promise<Check> =>
      page.evaluate(() => (window as unknown as { __surgeExample: { check: Check } }).__surgeExample.check);

    await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.textContent === "connected", null, { timeout: 15_000 });
    await page.waitForFunction(
      () => (window as unknown as { __surgeExample: { check: Check } }).__surgeExample.check.trades >= 50,
      null,
      { timeout: 15_000 },
    );
    // The trending list comes every 5 s.
    await page.waitForSelector('[data-testid="trending"] tbody tr', { timeout: 15_000 });
    assert.ok((await page.locator('[data-testid="tokens"] tbody tr').count()) >= 3, "live token rows");

    const before = await check();
    await surge.kill();
    await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.textContent !== "connected", null, {
      timeout: 10_000,
    });
    // The feed goes on publishing into NATS while no gateway runs.
    await sleep(1_500);
    await surge.start();
    await page.waitForFunction(() => document.querySelector('[data-testid="status"]')?.textContent === "connected", null, { timeout: 20_000 });
    await page.waitForFunction(
      (n) => (window as unknown as { __surgeExample: { check: Check } }).__surgeExample.check.trades >= n,
      before.trades + 100,
      { timeout: 20_000 },
    );
    const afterRestart = await check();
    assert.ok(afterRestart.reconnects >= 1, "the page lost its connection");
    assert.ok(afterRestart.recovered > 0, "trades published while the gateway was down were recovered");
    assert.equal(afterRestart.silentGaps, 0, "no trade_id missing");
    assert.equal(afterRestart.duplicates, 0, "no trade_id twice");
    assert.deepEqual(afterRestart.announcedGaps, [], "same stream: nothing to announce");
    assert.match((await page.locator('[data-testid="continuity"]').textContent()) ?? "", /intact/);

    mkdirSync(path.join(PACKAGE_DIR, "test-output"), { recursive: true });
    await page.screenshot({ path: path.join(PACKAGE_DIR, "test-output", "sdk-example.png") });

    // The detail page of the first token in the list.
    await page.locator('[data-testid="tokens"] tbody tr a').first().click();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="detail-trades"] tbody tr').length >= 5, null, {
      timeout: 15_000,
    });
    assert.match((await page.locator('[data-testid="detail-price"]').textContent()) ?? "", /\d/);
    await page.screenshot({ path: path.join(PACKAGE_DIR, "test-output", "sdk-example-detail.png") });

    // The browser's `online` event reaches the client: it checks its open
    // connection with a ping at once. Trades arrive 50 times a second, so
    // the heartbeat itself never pings (it waits for 25 s of silence).
    assert.equal(pings.length, 0, "no heartbeat ping while trades flow");
    const reconnects = (): Promise<number> =>
      page.evaluate(() => (window as unknown as { __surgeExample: { client: SurgeClient } }).__surgeExample.client.stats.reconnects);
    const reconnectsBefore = await reconnects();
    await browser.setOffline(true);
    await browser.setOffline(false);
    const deadline = Date.now() + 5_000;
    while (pings.length === 0 && Date.now() < deadline) await sleep(50);
    assert.equal(pings.length, 1, "one ping after the online event");
    assert.equal(await reconnects(), reconnectsBefore, "the connection stayed");
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
    await killChild(web, "SIGTERM");
    await killChild(feed, "SIGTERM");
    await surge.stop();
    await nats.stop();
  }
});
