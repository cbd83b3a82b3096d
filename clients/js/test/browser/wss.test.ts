/**
 * wss:// in headless Chromium against surge's own TLS listener, from a page
 * served over https (surge's `/healthz` on the same TLS port, so the page's
 * origin is https). The browser refuses a plain ws:// connection from such
 * a page (mixed content), which is why the listener speaks TLS; over wss://
 * the page gets the welcome, subscribes and receives a published message
 * (permessage-deflate negotiated by the browser). The certificate is made
 * for the test by openssl, for the name `surge.test`, which Chromium maps to
 * 127.0.0.1 (a loopback name would be exempt from the mixed-content rule).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_FLAGS, Surge } from "../integration/harness.js";

const HOST = "surge.test";

interface PageSide {
  frames: { type: string; [k: string]: unknown }[];
  error: string | null;
}

test("a page served over https reaches surge over wss:// and is refused ws://", { timeout: 60_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium; scripts/test-js does)`);
  const dir = mkdtempSync(path.join(tmpdir(), "surge-js-wss-"));
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", `/CN=${HOST}`, "-addext", `subjectAltName=DNS:${HOST}`,
  ], { stdio: "ignore" });
  const surge = await Surge.start({
    env: { SURGE_TLS_CERT: cert, SURGE_TLS_KEY: key, SURGE_PUBLIC_HEALTHZ: "true" },
  });
  const profile = mkdtempSync(path.join(tmpdir(), "surge-js-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The test's own self-signed certificate.
    ignoreHTTPSErrors: true,
    args: [
      ...CHROMIUM_FLAGS,
      "--ignore-certificate-errors",
      `--host-resolver-rules=MAP ${HOST} 127.0.0.1`,
    ],
  });
  try {
    const page = browser.pages()[0] ?? (await browser.newPage());
    const origin = `https://${HOST}:${surge.wsPort}`;
    const landed = await page.goto(`${origin}/healthz`);
    assert.equal(landed?.status(), 200, "surge's /healthz over https");
    assert.equal(await page.evaluate(() => location.protocol), "https:");

    // Plain ws:// from an https page: the browser refuses to construct it.
    const plain = await page.evaluate((url) => {
      try {
        new WebSocket(url).close();
        return "constructed";
      } catch (e) {
        return (e as Error).name;
      }
    }, `ws://${HOST}:${surge.wsPort}/ws`);
    assert.equal(plain, "SecurityError");

    // wss://: welcome, subscribe, then a published message.
    await page.evaluate((url) => {
      const side: PageSide = { frames: [], error: null };
      (window as unknown as { side: PageSide }).side = side;
      const ws = new WebSocket(url);
      ws.onmessage = (event) => {
        const frame = JSON.parse(String(event.data)) as { type: string };
        side.frames.push(frame);
        if (frame.type === "welcome") ws.send(JSON.stringify({ type: "subscribe", channels: ["odin.global.>"] }));
      };
      ws.onerror = () => {
        side.error = "error";
      };
      ws.onclose = (event) => {
        side.error ??= `closed ${event.code}`;
      };
    }, `wss://${HOST}:${surge.wsPort}/ws`);
    const frames = (): Promise<PageSide> => page.evaluate(() => (window as unknown as { side: PageSide }).side);
    await page.waitForFunction(
      () => (window as unknown as { side: PageSide }).side.frames.some((f) => f.type === "subscribed"),
      null,
      { timeout: 15_000 },
    ).catch(async (e: unknown) => {
      throw new Error(`no subscribed frame: ${JSON.stringify(await frames())} ${String(e)}\n${surge.stderr()}`);
    });
    const sseq = await surge.publish("odin.global.trending", { tokens: ["BTC", "ETH"], over: "wss" });
    await page.waitForFunction(
      () => (window as unknown as { side: PageSide }).side.frames.some((f) => f.type === "message"),
      null,
      { timeout: 15_000 },
    );
    const side = await frames();
    assert.equal(side.error, null);
    const message = side.frames.find((f) => f.type === "message");
    assert.ok(message !== undefined);
    assert.equal(message["subject"], "odin.global.trending");
    assert.equal(message["sseq"], sseq);
    assert.deepEqual(message["data"], { tokens: ["BTC", "ETH"], over: "wss" });
    assert.equal(side.frames[0]?.type, "welcome");
  } finally {
    await browser.close();
    await surge.stop();
    rmSync(profile, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});
