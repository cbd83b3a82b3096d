/**
 * The real `surge` binary and a real `nats-server` for the integration and
 * browser tests: free loopback ports, processes killed when the test (or
 * the test process) ends, and small helpers to publish and wait.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, createWriteStream, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** clients/js, whether running from test/ or build/test/. */
export const PACKAGE_DIR = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  return dir;
})();
export const REPO_ROOT = path.resolve(PACKAGE_DIR, "..", "..");

/** The surge binary: $SURGE_BIN, else the workspace's debug build (scripts/test-js builds it). */
export function surgeBinary(): string {
  const bin = process.env["SURGE_BIN"] ?? path.join(REPO_ROOT, "target", "debug", "surge");
  if (!existsSync(bin)) {
    throw new Error(`surge binary not found at ${bin}: run \`cargo build -p surge-server\` (scripts/test-js does) or set SURGE_BIN`);
  }
  return bin;
}

/** Debian's Chromium, and the flags it runs headless with here (as root, no network beyond loopback). */
export const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
export const CHROMIUM_FLAGS: readonly string[] = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function natsBinary(): string {
  for (const candidate of ["/usr/sbin/nats-server", "/usr/bin/nats-server"]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new Error("nats-server not found: install Debian's nats-server package (scripts/test does)");
}

const children = new Set<ChildProcess>();
function killAll(): void {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** A child process killed when the test process exits, whatever happens. */
export function spawnTracked(command: string, args: string[], options: Parameters<typeof spawn>[2]): ChildProcess {
  const child = spawn(command, args, options);
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** Kills `child` (SIGKILL unless told) and resolves once it is gone. */
export async function killChild(child: ChildProcess, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  await gone;
}

/** Ports this test process has handed out: binding port 0 can give the same port twice in a row. */
const givenPorts = new Set<number>();

export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = await kernelPort();
    if (!givenPorts.has(port)) {
      givenPorts.add(port);
      return port;
    }
  }
  throw new Error("no loopback port that was not handed out already in 1000 tries");
}

function kernelPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === "object") resolve(address.port);
        else reject(new Error("no port"));
      });
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` every 10 ms until it holds; throws with `what` after `timeoutMs`. */
export async function waitFor(what: string, condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function tempDir(what: string): string {
  return mkdtempSync(path.join(tmpdir(), `surge-js-${what}-`));
}

export interface SurgeOptions {
  env?: Record<string, string>;
  /** --max-connections (default 1000) and --shards (default 2). */
  maxConnections?: number;
  shards?: number;
  /** Reuse ports (to restart "the same" gateway). */
  wsPort?: number;
  adminPort?: number;
}

/** One `surge` process. `start()` again after `kill()` restarts it on the same ports. */
export class Surge {
  readonly wsPort: number;
  readonly adminPort: number;
  private readonly env: Record<string, string>;
  private readonly limits: string[];
  private child: ChildProcess | null = null;
  private readonly dir = tempDir("surge");
  private runs = 0;

  private constructor(wsPort: number, adminPort: number, env: Record<string, string>, limits: string[]) {
    this.wsPort = wsPort;
    this.adminPort = adminPort;
    this.env = env;
    this.limits = limits;
  }

  static async start(options: SurgeOptions = {}): Promise<Surge> {
    const limits = ["--shards", String(options.shards ?? 2), "--max-connections", String(options.maxConnections ?? 1000)];
    const surge = new Surge(options.wsPort ?? (await freePort()), options.adminPort ?? (await freePort()), options.env ?? {}, limits);
    await surge.start();
    return surge;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  get admin(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  async start(): Promise<void> {
    this.runs += 1;
    const log = createWriteStream(path.join(this.dir, `stderr-${this.runs}`));
    const child = spawn(
      surgeBinary(),
      ["--listen", `127.0.0.1:${this.wsPort}`, "--admin-listen", `127.0.0.1:${this.adminPort}`, ...this.limits],
      {
        cwd: this.dir,
        env: { PATH: process.env["PATH"] ?? "", SURGE_LOG_LEVEL: "info", ...this.env },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    child.stderr?.pipe(log);
    children.add(child);
    child.once("exit", () => children.delete(child));
    this.child = child;
    const deadline = Date.now() + 15_000;
    while (!(await portOpen(this.adminPort)) || !(await portOpen(this.wsPort))) {
      if (child.exitCode !== null) throw new Error(`surge exited with ${child.exitCode}:\n${this.stderr()}`);
      if (Date.now() > deadline) throw new Error(`surge did not come up:\n${this.stderr()}`);
      await sleep(20);
    }
  }

  stderr(): string {
    try {
      return readFileSync(path.join(this.dir, `stderr-${this.runs}`), "utf8");
    } catch {
      return "";
    }
  }

  /** SIGKILL: a crash, no close frames. Resolves once the process is gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill(signal);
    await gone;
    this.child = null;
  }

  async stop(): Promise<void> {
    await this.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** POST /publish; returns the sseq. */
  async publish(subject: string, data: unknown, priority?: string): Promise<number> {
    const body: Record<string, unknown> = { subject, data };
    if (priority !== undefined) body["priority"] = priority;
    const response = await fetch(`${this.admin}/publish`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (response.status !== 202) throw new Error(`publish ${subject}: ${response.status} ${text}`);
    return (JSON.parse(text) as { sseq: number }).sseq;
  }

  async metrics(): Promise<string> {
    const response = await fetch(`${this.admin}/metrics`);
    return response.text();
  }
}

/** A `nats-server -js` on a free loopback port with its own store. */
export class Nats {
  readonly port: number;
  private readonly dir = tempDir("nats");
  private child: ChildProcess | null = null;

  private constructor(port: number) {
    this.port = port;
  }

  static async start(): Promise<Nats> {
    const nats = new Nats(await freePort());
    const child = spawn(natsBinary(), ["-js", "-a", "127.0.0.1", "-p", String(nats.port), "-sd", nats.dir], {
      stdio: "ignore",
    });
    children.add(child);
    child.once("exit", () => children.delete(child));
    nats.child = child;
    const deadline = Date.now() + 15_000;
    while (!(await portOpen(nats.port))) {
      if (child.exitCode !== null) throw new Error(`nats-server exited with ${child.exitCode}`);
      if (Date.now() > deadline) throw new Error("nats-server did not come up");
      await sleep(20);
    }
    return nats;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child !== null && child.exitCode === null) {
      const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGKILL");
      await gone;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Publishes straight to NATS over its text protocol (core publish; the
 * stream captures the subject), so messages keep flowing while a gateway
 * is down.
 */
export class NatsPublisher {
  private readonly socket: net.Socket;
  private pongs: (() => void)[] = [];
  private buffer = "";

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buffer += chunk;
      let index: number;
      while ((index = this.buffer.indexOf("\r\n")) >= 0) {
        const line = this.buffer.slice(0, index);
        this.buffer = this.buffer.slice(index + 2);
        if (line === "PING") socket.write("PONG\r\n");
        else if (line === "PONG") this.pongs.shift()?.();
      }
    });
  }

  static async connect(port: number): Promise<NatsPublisher> {
    const socket = net.connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("error", reject);
    });
    const publisher = new NatsPublisher(socket);
    socket.write('CONNECT {"verbose":false,"pedantic":false,"name":"surge-js-test"}\r\n');
    await publisher.flush();
    return publisher;
  }

  publish(subject: string, data: unknown): void {
    const payload = Buffer.from(JSON.stringify(data));
    this.socket.write(`PUB ${subject} ${payload.length}\r\n`);
    this.socket.write(payload);
    this.socket.write("\r\n");
  }

  /** Resolves once the server has processed everything sent so far. */
  flush(): Promise<void> {
    return new Promise((resolve) => {
      this.pongs.push(resolve);
      this.socket.write("PING\r\n");
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** `surge token …` with `secret`: a real HS256 token. */
export function mintToken(secret: string, args: string[]): string {
  const out = spawnSync(surgeBinary(), ["token", ...args], {
    env: { PATH: process.env["PATH"] ?? "", SURGE_JWT_SECRET: secret },
    encoding: "utf8",
  });
  if (out.status !== 0) throw new Error(`surge token failed: ${out.stderr}`);
  return out.stdout.trim();
}

/**
 * A TCP proxy in front of a gateway, so a test can cut (`sever`) or
 * silence (`blackhole`) the client's connection while the gateway keeps
 * running, and drop chosen server frames (`dropServerFrame`).
 */
export class Proxy {
  readonly port: number;
  private readonly server: net.Server;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket; silenced: boolean }>();
  private dropper: ((frame: Record<string, unknown>) => boolean) | null = null;
  connections = 0;

  private constructor(server: net.Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(targetPort: number): Promise<Proxy> {
    let proxy: Proxy | null = null;
    const server = net.createServer((client) => proxy?.accept(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    const address = server.address();
    if (address === null || typeof address !== "object") throw new Error("no proxy port");
    proxy = new Proxy(server, address.port);
    return proxy;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  private accept(client: net.Socket, targetPort: number): void {
    this.connections += 1;
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { client, upstream, silenced: false };
    this.pairs.add(pair);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", () => (pair.silenced ? undefined : end()));
    upstream.on("close", () => (pair.silenced ? undefined : end()));
    client.on("data", (chunk: Buffer) => {
      if (!pair.silenced) upstream.write(chunk);
    });
    const reader = new ServerFrames((bytes, frame) => {
      if (pair.silenced) return;
      if (frame !== null && this.dropper?.(frame) === true) return;
      client.write(bytes);
    });
    upstream.on("data", (chunk: Buffer) => reader.push(chunk));
  }

  /** Cuts every connection (both sides see a reset or close). */
  sever(): void {
    for (const pair of [...this.pairs]) {
      pair.client.destroy();
      pair.upstream.destroy();
      this.pairs.delete(pair);
    }
  }

  /** Stops forwarding on every current connection, keeping the sockets open: a dead path TCP cannot see. */
  blackhole(): void {
    for (const pair of this.pairs) pair.silenced = true;
  }

  /** Frames from the server for which `predicate` is true are not forwarded (once it returns true, per call site's choice). */
  dropServerFrame(predicate: ((frame: Record<string, unknown>) => boolean) | null): void {
    this.dropper = predicate;
  }

  async close(): Promise<void> {
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    this.pairs.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Splits the server's side of a WebSocket connection into its HTTP head
 * and frames (server frames are unmasked), handing each on with the JSON
 * of a complete text frame.
 */
class ServerFrames {
  private buffer = Buffer.alloc(0);
  private headDone = false;

  constructor(private readonly out: (bytes: Buffer, frame: Record<string, unknown> | null) => void) {}

  push(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (!this.headDone) {
      const end = this.buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      this.out(this.buffer.subarray(0, end + 4), null);
      this.buffer = this.buffer.subarray(end + 4);
      this.headDone = true;
    }
    for (;;) {
      if (this.buffer.length < 2) return;
      const b0 = this.buffer[0] as number;
      const b1 = this.buffer[1] as number;
      let length = b1 & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this.buffer.length < 4) return;
        length = this.buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this.buffer.length < 10) return;
        length = Number(this.buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (b1 & 0x80) offset += 4;
      if (this.buffer.length < offset + length) return;
      const bytes = this.buffer.subarray(0, offset + length);
      this.buffer = this.buffer.subarray(offset + length);
      let frame: Record<string, unknown> | null = null;
      if ((b0 & 0x0f) === 1 && (b0 & 0x80) !== 0 && (b1 & 0x80) === 0) {
        try {
          frame = JSON.parse(bytes.subarray(offset).toString("utf8")) as Record<string, unknown>;
        } catch {
          frame = null;
        }
      }
      this.out(Buffer.from(bytes), frame);
    }
  }
}

/**
 * Client options for tests that assert something came back by resume: every
 * reconnect waits exactly 300 ms (the jitter drawn at its top), so messages
 * published meanwhile are certain to be missed. With the default full
 * jitter a client may come back before the next publish and miss nothing.
 */
export const FIXED_RECONNECT = { backoff: { baseMs: 300, capMs: 300 }, random: (): number => 1 } as const;
