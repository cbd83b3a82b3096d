// The /dashboard page in real headless Chromium (Debian's `chromium`,
// driven by playwright-core; nothing is downloaded). Against a real surge
// with a real nats-server, it checks that the page loads with no console
// error, that its numbers move while surge-load connects and publishes,
// that a refused burst shows in the refusal panel, and that the broker
// panel turns red when NATS is killed; then it saves a screenshot.
//
// Needs: target/debug/surge and target/debug/surge-load (or SURGE_BIN /
// SURGE_LOAD_BIN), nats-server, chromium. scripts/test-dashboard builds and
// installs them. Every process it starts listens on loopback and is stopped
// at the end; the load is bounded (20 subscribers for 6 s, one burst of 90
// held 8 s).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const SURGE = process.env.SURGE_BIN || join(repo, "target", "debug", "surge");
const SURGE_LOAD = process.env.SURGE_LOAD_BIN || join(repo, "target", "debug", "surge-load");
const NATS = existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = join(here, "out");
const TOKEN = "browser-test-admin-token";
const MAX_CONNECTIONS = 60;

const children = [];
const scratch = mkdtempSync(join(tmpdir(), "surge-browser-"));
let browser;

after(async () => {
  if (browser) await browser.close();
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, {
    env: { PATH: process.env.PATH, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderrText = "";
  child.stderr.on("data", (d) => { child.stderrText = (child.stderrText + d).slice(-4000); });
  children.push(child);
  return child;
}

/** Runs a command to its end (bounded by `ms`); resolves to its exit code. */
function run(cmd, args, ms) {
  return new Promise((ok, fail) => {
    const child = start(cmd, args);
    const timer = setTimeout(() => { child.kill("SIGKILL"); fail(new Error(`${cmd} ${args.join(" ")} took over ${ms} ms`)); }, ms);
    child.on("exit", (code) => { clearTimeout(timer); ok(code); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

async function waitForPort(port, child) {
  await until(`port ${port}`, async () => {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${child.stderrText}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/livez`);
      return r.ok || r.status > 0;
    } catch {
      return false;
    }
  }, 15000);
}

/** A number as the page shows it ("1.2 k" → 1200, "–" → null). */
function number(text) {
  const m = /^(-?[\d.]+)\s*([kMG]?)/.exec(text.trim());
  if (!m) return null;
  return Number(m[1]) * { "": 1, k: 1e3, M: 1e6, G: 1e9 }[m[2]];
}

test("the dashboard in Chromium: live numbers, refusals, the broker turning red", { timeout: 120000 }, async () => {
  assert.ok(existsSync(SURGE), `${SURGE} missing: cargo build -p surge-server`);
  assert.ok(existsSync(SURGE_LOAD), `${SURGE_LOAD} missing: cargo build -p surge-load`);

  const natsPort = await freePort();
  const nats = start(NATS, ["-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", join(scratch, "nats")]);
  await until("nats-server", async () => {
    if (nats.exitCode !== null) throw new Error(`nats-server exited: ${nats.stderrText}`);
    return new Promise((ok) => {
      const s = createServer();
      s.once("error", () => ok(true)); // in use: it listens
      s.listen(natsPort, "127.0.0.1", () => s.close(() => ok(false)));
    });
  });

  const wsPort = await freePort();
  const adminPort = await freePort();
  const admin = `http://127.0.0.1:${adminPort}`;
  const surge = start(SURGE, [
    "--listen", `127.0.0.1:${wsPort}`, "--admin-listen", `127.0.0.1:${adminPort}`,
    "--max-connections", String(MAX_CONNECTIONS), "--shards", "2",
  ], {
    SURGE_NATS_URL: `nats://127.0.0.1:${natsPort}`,
    SURGE_JS_STREAM: "BROWSER_TEST",
    SURGE_ADMIN_TOKEN: TOKEN,
    SURGE_ADMIN_PUBLISH_RATE: "0",
    SURGE_LOG_LEVEL: "warn",
  });
  await waitForPort(adminPort, surge);

  // The stream is the admin token's: nothing without it.
  assert.equal((await fetch(`${admin}/dashboard/events`)).status, 401);
  const form = await fetch(`${admin}/dashboard`);
  assert.equal(form.status, 401, "the token form, not the page");
  assert.match(await form.text(), /name="token"/);
  // The form's POST: a wrong token gets the form again, the right one a
  // redirect with the session cookie.
  const login = (token) => fetch(`${admin}/dashboard/login`, {
    method: "POST", redirect: "manual", body: new URLSearchParams({ token }),
  });
  assert.equal((await login("wrong")).status, 401);
  const loggedIn = await login(TOKEN);
  assert.equal(loggedIn.status, 303);
  assert.match(loggedIn.headers.get("set-cookie"), /^surge_dashboard=[0-9a-f]{64}; Path=\/dashboard; HttpOnly; SameSite=Strict$/);
  const viaForm = loggedIn.headers.get("set-cookie").split(";")[0];
  const page0 = await fetch(`${admin}/dashboard`, { headers: { cookie: viaForm } });
  assert.equal(page0.status, 200);
  assert.match(page0.headers.get("content-security-policy"), /default-src 'none'/);

  mkdirSync(OUT, { recursive: true });
  // A fresh profile directory each run (playwright passes it as
  // --user-data-dir).
  browser = await chromium.launchPersistentContext(join(scratch, "chromium"), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // The event stream is cut when the page closes; anything else is a fault.
    if (!r.url().endsWith("/dashboard/events")) problems.push(`request failed: ${r.url()}`);
  });

  // The token once, in the URL: a session cookie, then the page.
  await page.goto(`${admin}/dashboard?token=${TOKEN}`);
  assert.equal(new URL(page.url()).search, "", "redirected to /dashboard without the token");
  const cookies = await browser.cookies();
  const session = cookies.find((c) => c.name === "surge_dashboard");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  assert.notEqual(session.value, TOKEN);
  await page.waitForSelector('#stream[data-state="live"]', { timeout: 10000 });

  const text = (key) => page.locator(`[data-k="${key}"]`).first().textContent();
  assert.equal(await text("connections.max"), String(MAX_CONNECTIONS));
  assert.equal(await page.locator("#panel-broker").getAttribute("data-state"), "connected");
  assert.equal(await page.locator("#shards tr").count(), 2);
  const admittedBefore = number(await text("admissions.total"));

  // Load: 20 subscribers, 200 publishes/s for 6 s (through /publish to
  // NATS and back). The page must show connections and deliveries moving.
  const fanout = run(SURGE_LOAD, [
    "fanout", "--url", `ws://127.0.0.1:${wsPort}/ws`, "--admin", admin, "--admin-token", TOKEN,
    "-n", "20", "--rate", "200", "--duration", "6s", "--sources", "1", "--threads", "1",
  ], 60000);
  const during = await until("connections and deliveries on the page", async () => {
    const conns = number(await text("connections.current"));
    const deliveries = number(await text("delivered.per_s"));
    const bytes = await text("bytes_sent.per_s");
    return conns >= 20 && deliveries > 0 ? { conns, deliveries, bytes } : false;
  }, 20000);
  assert.match(during.bytes, /B\/s$/);
  await fanout;
  const admittedAfter = number(await text("admissions.total"));
  assert.ok(admittedAfter >= admittedBefore + 20, `admissions ${admittedBefore} -> ${admittedAfter}`);
  assert.ok(number(await text("broker.last_sseq")) > 0, "sseq received from NATS");
  assert.ok(number(await text("handshake.count")) >= 0);

  // A refused burst: 90 at once against 60 slots, held for 8 s.
  await until("the fan-out's connections gone", async () => number(await text("connections.current")) === 0);
  const burst = run(SURGE_LOAD, [
    "connect", "--url", `ws://127.0.0.1:${wsPort}/ws`, "-n", "90", "--hold", "8s",
    "--workers", "1", "--sources", "1", "--threads", "1",
  ], 60000);
  const refused = await until("503 full in the refusal panel", async () => {
    const total = number(await page.locator('#refusals tr[data-cause="full"] td.total').textContent());
    return total >= 30 ? total : false;
  });
  assert.ok(refused <= 90 - MAX_CONNECTIONS + 5, `refused ${refused}`);
  assert.equal(await page.locator('#refusals tr[data-cause="full"] td').first().textContent(), "503");
  assert.equal(number(await text("connections.current")), MAX_CONNECTIONS, "full while held");

  // NATS killed (the burst's connections still held): the broker panel
  // turns red.
  nats.kill("SIGKILL");
  await page.waitForSelector('#panel-broker.bad[data-state="disconnected"]', { timeout: 15000 });
  const border = await page.locator("#panel-broker").evaluate((el) => getComputedStyle(el).borderTopColor);
  assert.equal(border, "rgb(248, 81, 73)", "red");
  assert.match(await page.locator("#problems").textContent(), /broker disconnected/);

  // The picture, while the burst is held; then the burst ends.
  await sleep(1000);
  await page.screenshot({ path: join(OUT, "dashboard.png"), fullPage: true });
  await burst;
  assert.deepEqual(problems, [], "no console error, page error or failed request");
});
