#!/usr/bin/env node
// The example app in one command (`npm run example`): bundles examples/app.tsx
// with esbuild (the SDK from src/, React from node_modules), serves it on
// http://127.0.0.1:5173/ and runs `surge feed` against the local gateway, so
// a gateway started with `cargo run --release -p surge-server` shows live data.
//
//   --port N       port to serve on (default 5173)
//   --no-feed      do not start `surge feed` (publish some other way)
//   --feed-rate N  `surge feed --rate` (default 20 messages/s)
//
// `surge feed` reads the same settings as the gateway (SURGE_ADMIN_LISTEN,
// SURGE_ADMIN_TOKEN, SURGE_NATS_URL, …) from the environment.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const repo = path.resolve(pkg, "..", "..");

const args = process.argv.slice(2);
function option(name, fallback) {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
}
const port = Number(option("--port", process.env.PORT ?? "5173"));
const feed = !args.includes("--no-feed");
const feedRate = option("--feed-rate", "20");

const sdk = {
  name: "sdk-from-source",
  setup(b) {
    b.onResolve({ filter: /^@surge-gateway\/client(\/react)?$/ }, (a) => ({
      path: path.join(pkg, "src", a.path.endsWith("/react") ? "react.ts" : "index.ts"),
    }));
  },
};

async function bundle() {
  const result = await build({
    entryPoints: [path.join(here, "app.tsx")],
    bundle: true,
    write: false,
    format: "esm",
    jsx: "automatic",
    target: "es2022",
    minify: true,
    define: { "process.env.NODE_ENV": '"production"' },
    plugins: [sdk],
    logLevel: "warning",
  });
  return result.outputFiles[0].contents;
}

const app = await bundle();
const html = readFileSync(path.join(here, "index.html"));

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname === "/app.js") {
    res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" });
    res.end(app);
  } else if (url.pathname === "/" || url.pathname === "/index.html") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(html);
  } else {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  }
});

let feeder = null;
function startFeed() {
  const built = ["release", "debug"].map((p) => path.join(repo, "target", p, "surge")).find((p) => existsSync(p));
  const [cmd, cmdArgs] = built
    ? [built, ["feed", "--rate", feedRate]]
    : ["cargo", ["run", "-q", "--release", "-p", "surge-server", "--", "feed", "--rate", feedRate]];
  console.log(`starting: ${[cmd, ...cmdArgs].join(" ")}`);
  feeder = spawn(cmd, cmdArgs, { cwd: repo, stdio: ["ignore", "inherit", "inherit"] });
  feeder.on("exit", (code, signal) => {
    if (!stopping) console.log(`surge feed exited (${signal ?? code}); is the gateway running? (cargo run --release -p surge-server)`);
    feeder = null;
  });
}

let stopping = false;
function stop() {
  stopping = true;
  feeder?.kill("SIGTERM");
  server.close();
  process.exit(0);
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

server.listen(port, "127.0.0.1", () => {
  console.log(`example app at http://127.0.0.1:${port}/  (gateway ws://127.0.0.1:8080/ws; add ?gateway=ws://host:port/ws for another)`);
  if (feed) startFeed();
});
