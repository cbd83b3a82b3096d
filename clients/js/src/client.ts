import { backoffDelay, DEFAULT_BACKOFF, retryHintMs, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { matches, patternError } from "./patterns.js";
import { parseFrame, RESUME_FROM_NOW, type Limits, type MessageFrame, type ServerFrame } from "./protocol.js";
import { tokenExpiresAt } from "./token.js";
import {
  SurgeError,
  type ClientEvents,
  type ClientState,
  type MessageHandler,
  type ReconnectCause,
  type SubscribeOptions,
  type Subscription,
  type SurgeMessage,
  type Timers,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

export interface ClientOptions {
  /** A fixed token, sent as `?token=` at the upgrade. */
  token?: string;
  /**
   * Fetches a token: at connect (when none is cached or the cached one's
   * `exp` has passed), on `token_expiring` (sent as `refresh`, without
   * reconnecting), and after a 4001 close before reconnecting.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket implementation; default `globalThis.WebSocket` (browsers, Node ≥ 22). */
  WebSocket?: WebSocketConstructor;
  /** Which gateway the next attempt goes to after a failure: the next in the list (`ordered`, default) or another at random. */
  failover?: "ordered" | "random";
  /** Reconnect backoff: default 250 ms doubling to 8 s, full jitter (the simulator's). */
  backoff?: Partial<BackoffOptions>;
  /** An attempt that has not received `welcome` by then is abandoned (default 5 s, the simulator's client timeout). */
  connectTimeoutMs?: number;
  /**
   * Dead-connection detection: after `intervalMs` (default: the welcome's
   * `ping_interval_ms`) without any frame, send `ping`; if nothing arrives
   * within `timeoutMs` more (default 10 s), drop the connection and
   * reconnect. `false` turns it off.
   */
  heartbeat?: { intervalMs?: number; timeoutMs?: number } | false;
  /**
   * Where the client hears that the network came back (`online`) or the
   * page became visible again (`visibilitychange`). Either one checks an
   * open connection at once with a `ping` (one that died while the laptop
   * slept is found within the heartbeat timeout, not after the next
   * interval); `online` also cuts a reconnect wait short, to a first
   * backoff delay, unless the gateway asked for the wait (a 1013 close).
   * Default: `window` and `document` when they exist;
   * `false` turns it off.
   */
  lifecycle?: LifecycleSources | false;
  /** Messages held while a resume or replay fills a gap before the client gives up and reconnects (default 10,000). */
  maxBufferedMessages?: number;
  /** How long a `replay` may take before the client reconnects and resumes instead (default 10 s). */
  replayTimeoutMs?: number;
  /** Start connecting at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  random?: () => number;
  timers?: Timers;
}

const DEFAULT_TIMERS: Timers = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Something that fires events by name (`window`, `document`, Node's `EventTarget`). */
export interface LifecycleTarget {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

/** See `ClientOptions.lifecycle`. */
export interface LifecycleSources {
  /** Fires `online` (in browsers: `window`). */
  online?: LifecycleTarget;
  /** Fires `visibilitychange`; `visible()` says whether the page is visible now (in browsers: `document`). */
  visibility?: { target: LifecycleTarget; visible: () => boolean };
}

/** `window` and `document`, where they exist. */
function browserLifecycle(): LifecycleSources {
  const g = globalThis as {
    window?: Partial<LifecycleTarget>;
    document?: Partial<LifecycleTarget> & { visibilityState?: string };
  };
  const sources: LifecycleSources = {};
  const win = g.window;
  if (typeof win?.addEventListener === "function" && typeof win.removeEventListener === "function") {
    sources.online = win as LifecycleTarget;
  }
  const doc = g.document;
  if (typeof doc?.addEventListener === "function" && typeof doc.removeEventListener === "function") {
    sources.visibility = { target: doc as LifecycleTarget, visible: () => doc.visibilityState !== "hidden" };
  }
  return sources;
}

/** Close code the client sends (and reports) when it gives up on a connection itself. */
export const CLIENT_GAVE_UP = 4000;

interface HandlerEntry {
  fn: MessageHandler;
  onError: ((error: SurgeError) => void) | undefined;
}

interface PatternEntry {
  pattern: string;
  handlers: Set<HandlerEntry>;
  /** Subscribed on a connection before: covered by the resume anchor. */
  active: boolean;
  /** Recovered messages at or below this sseq predate the subscription (set when it was added mid-connection). */
  floor: number | null;
}

type ResumeKind = "anchor" | "carried" | "fresh";

interface ResumeOp {
  kind: ResumeKind;
  channels: string[];
  since: number;
  epoch: string | null;
  id: number;
  recovered: number;
  sent: boolean;
  retries: number;
}

interface ReplayOp {
  id: number;
  from: number;
  to: number;
  frames: Map<number, MessageFrame>;
  /** Live frames that arrived after the gap, in order. */
  after: MessageFrame[];
}

interface Conn {
  ws: WebSocketLike;
  url: string;
  attemptAtStart: number;
  dead: boolean;
  welcomed: boolean;
  connId: string | null;
  epoch: string | null;
  limits: Limits | null;
  expectedSeq: number;
  /** Patterns subscribed (or being subscribed) on this connection. */
  wire: Set<string>;
  resume: ResumeOp | null;
  /** Live messages held while a resume from the anchor is not complete. */
  held: MessageFrame[];
  replay: ReplayOp | null;
  lastRx: number;
  pingSentAt: number | null;
  httpStatus: number | null;
  probes: Map<number, { op: ResumeOp; channel: string }>;
  timers: Set<unknown>;
  /** The pending heartbeat check. */
  heartbeat: unknown;
}

interface HeartbeatTimes {
  intervalMs: number;
  timeoutMs: number;
}

/** Connects to one or several gateways; see `ClientOptions`. */
export function connect(urls: string | readonly string[], options: ClientOptions = {}): SurgeClient {
  return new SurgeClient(urls, options);
}

export class SurgeClient {
  private readonly urls: readonly string[];
  private readonly options: ClientOptions;
  private readonly backoff: BackoffOptions;
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly events = new Emitter<ClientEvents>();
  private readonly subs = new Map<string, PatternEntry>();
  private conn: Conn | null = null;
  private urlIndex = 0;
  private attempt = 0;
  private nextId = 1;
  private stopped = false;
  private started = false;
  private syncQueued = false;
  private reconnectTimer: unknown = null;
  /** When the pending reconnect fires, and whether the gateway asked for that wait. */
  private reconnectAt = 0;
  private waitRequested = false;
  private detachLifecycle: () => void = () => {};
  private anchor: { sseq: number | null; epoch: string | null } = { sseq: null, epoch: null };
  private cachedToken: string | null = null;
  private tokenInvalid = false;
  private snapshot: ClientState;
  /** Counters for tests and dashboards. */
  readonly stats = { delivered: 0, recovered: 0, duplicates: 0, replayRequests: 0, reconnects: 0 };

  constructor(urls: string | readonly string[], options: ClientOptions = {}) {
    this.urls = typeof urls === "string" ? [urls] : [...urls];
    if (this.urls.length === 0) throw new TypeError("connect() needs at least one gateway URL");
    this.options = options;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.timers = options.timers ?? DEFAULT_TIMERS;
    this.random = options.random ?? Math.random;
    if (options.token !== undefined) this.cachedToken = options.token;
    this.snapshot = {
      status: "idle",
      url: null,
      connId: null,
      epoch: null,
      attempt: 0,
      retryInMs: null,
      throttle: null,
      lastClose: null,
    };
    if (options.failover === "random") this.urlIndex = Math.floor(this.random() * this.urls.length) % this.urls.length;
    this.attachLifecycle();
    if (options.autoConnect !== false) this.connect();
  }

  /** The current state (a new object after every change). */
  get state(): ClientState {
    return this.snapshot;
  }

  on<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  /** Starts connecting (only needed with `autoConnect: false`). */
  connect(): void {
    if (this.started || this.stopped) return;
    this.started = true;
    void this.attemptConnect();
  }

  /** Closes the connection for good (1000); handlers stay registered but nothing more arrives. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.detachLifecycle();
    if (this.reconnectTimer !== null) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const conn = this.conn;
    this.conn = null;
    if (conn !== null) {
      this.dropConn(conn);
      try {
        conn.ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this.setState({ status: "closed", retryInMs: null, connId: null });
  }

  /**
   * Calls `handler` for every message on a subject matching `pattern`
   * (`*` one token, `>` one or more trailing tokens). Several handlers may
   * share a pattern; the channel is subscribed once.
   */
  subscribe<T = unknown>(pattern: string, handler: MessageHandler<T>, options: SubscribeOptions = {}): Subscription {
    const invalid = patternError(pattern);
    if (invalid !== null) throw new SurgeError("invalid_subject", `invalid channel ${JSON.stringify(pattern)}: ${invalid}`, [pattern]);
    let entry = this.subs.get(pattern);
    if (entry === undefined) {
      entry = { pattern, handlers: new Set(), active: false, floor: null };
      this.subs.set(pattern, entry);
    }
    const record: HandlerEntry = { fn: handler as MessageHandler, onError: options.onError };
    entry.handlers.add(record);
    this.scheduleSync();
    let done = false;
    return {
      pattern,
      unsubscribe: () => {
        if (done) return;
        done = true;
        const current = this.subs.get(pattern);
        if (current === undefined) return;
        current.handlers.delete(record);
        // The entry goes one microtask later, so a handler removed and
        // added again in one tick (a remount) keeps its place in the resume.
        if (current.handlers.size === 0) this.scheduleSync();
      },
    };
  }

  /** The patterns with at least one handler. */
  patterns(): string[] {
    return [...this.subs.values()].filter((e) => e.handlers.size > 0).map((e) => e.pattern);
  }

  /** The stream position processed so far: the last `sseq` and the epoch it counts in. */
  position(): { sseq: number | null; epoch: string | null } {
    return { ...this.anchor };
  }

  /** Handlers registered for `pattern` (0 when none). */
  handlerCount(pattern: string): number {
    return this.subs.get(pattern)?.handlers.size ?? 0;
  }

  /**
   * Sends `refresh` with `token`, or with a token from `getToken` when
   * none is given. Resolves once sent (the answer comes as a `token`
   * event, or an `error` event with code `invalid_token`).
   */
  async refreshToken(token?: string): Promise<void> {
    const fresh = token ?? (await this.fetchToken());
    if (fresh === null) return;
    this.cachedToken = fresh;
    this.tokenInvalid = false;
    const conn = this.conn;
    if (conn === null || !conn.welcomed) return;
    this.send(conn, { type: "refresh", token: fresh, id: this.nextId++ });
  }

  // ---- connecting ----------------------------------------------------

  private async attemptConnect(): Promise<void> {
    if (this.stopped) return;
    this.reconnectTimer = null;
    const url = this.urls[this.urlIndex] as string;
    this.setState({ status: "connecting", url, retryInMs: null });
    this.emit("connecting", { url, attempt: this.attempt });
    let token: string | null = null;
    if (this.options.getToken !== undefined || this.options.token !== undefined) {
      token = await this.tokenForConnect();
      if (this.stopped) return;
      if (token === null) {
        this.scheduleReconnect("refused", null);
        return;
      }
    }
    const Impl = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Impl === undefined) {
      this.stopped = true;
      this.reportError(new SurgeError("protocol", "no WebSocket implementation: pass options.WebSocket (in Node, the ws package's)"));
      this.setState({ status: "closed" });
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Impl(withToken(url, token));
    } catch (error) {
      this.reportError(new SurgeError("protocol", `cannot open ${url}: ${String(error)}`));
      this.scheduleReconnect("refused", null);
      return;
    }
    const conn: Conn = {
      ws,
      url,
      attemptAtStart: this.attempt,
      dead: false,
      welcomed: false,
      connId: null,
      epoch: null,
      limits: null,
      expectedSeq: 1,
      wire: new Set(),
      resume: null,
      held: [],
      replay: null,
      lastRx: this.timers.now(),
      pingSentAt: null,
      heartbeat: null,
      httpStatus: null,
      probes: new Map(),
      timers: new Set(),
    };
    this.conn = conn;
    ws.addEventListener("message", (event: { data: unknown }) => this.onFrame(conn, event.data));
    ws.addEventListener("error", (event: { message?: unknown } | undefined) => {
      const status = /Unexpected server response: (\d{3})/.exec(String(event?.message ?? ""));
      if (status?.[1] !== undefined) conn.httpStatus = Number(status[1]);
    });
    ws.addEventListener("close", (event: { code?: number; reason?: string }) =>
      this.onClose(conn, event.code ?? 1006, event.reason ?? ""),
    );
    const connectTimeout = this.options.connectTimeoutMs ?? 5_000;
    this.later(conn, connectTimeout, () => {
      if (!conn.welcomed) this.giveUp(conn, `no welcome within ${connectTimeout} ms`);
    });
  }

  private async tokenForConnect(): Promise<string | null> {
    if (this.options.getToken === undefined) return this.cachedToken;
    const cached = this.cachedToken;
    if (cached !== null && !this.tokenInvalid) {
      const exp = tokenExpiresAt(cached);
      if (exp === null || exp > this.timers.now()) return cached;
    }
    return this.fetchToken();
  }

  private async fetchToken(): Promise<string | null> {
    const getToken = this.options.getToken;
    if (getToken === undefined) return null;
    try {
      const token = await getToken();
      this.cachedToken = token;
      this.tokenInvalid = false;
      return token;
    } catch (error) {
      this.reportError(new SurgeError("token_unavailable", `getToken failed: ${String(error)}`));
      return null;
    }
  }

  private onClose(conn: Conn, code: number, reason: string): void {
    if (conn.dead) return;
    this.dropConn(conn);
    if (this.conn === conn) this.conn = null;
    if (this.stopped) return;
    const opened = conn.welcomed;
    let cause: ReconnectCause = opened ? "closed" : "refused";
    let hint: number | null = null;
    if (code === 1013) {
      cause = "try_again_later";
      hint = retryHintMs(reason);
      // An overloaded gateway: keep backing off as if the attempt had failed.
      this.attempt = conn.attemptAtStart;
    }
    if (code === 4001) {
      cause = "token_expired";
      this.tokenInvalid = true;
    }
    if (conn.httpStatus === 401) this.tokenInvalid = true;
    const willReconnect = !(code === 4001 && this.options.getToken === undefined);
    this.setState({ lastClose: { code, reason }, connId: null });
    this.emit("disconnected", { url: conn.url, code, reason, opened, httpStatus: conn.httpStatus, willReconnect });
    if (!willReconnect) {
      this.reportError(new SurgeError("token_expired", "the token expired (4001) and there is no getToken to fetch a new one"));
      this.stopped = true;
      this.setState({ status: "closed" });
      return;
    }
    this.scheduleReconnect(cause, hint);
  }

  /** The client abandons `conn` itself (heartbeat, timeouts, buffer bound). */
  private giveUp(conn: Conn, reason: string): void {
    if (conn.dead) return;
    this.dropConn(conn);
    const ws = conn.ws as WebSocketLike & { terminate?: () => void };
    try {
      ws.close(CLIENT_GAVE_UP, reason.slice(0, 120));
    } catch {
      // not open yet
    }
    if (typeof ws.terminate === "function") ws.terminate();
    if (this.conn === conn) this.conn = null;
    if (this.stopped) return;
    this.setState({ lastClose: { code: CLIENT_GAVE_UP, reason }, connId: null });
    this.emit("disconnected", {
      url: conn.url,
      code: CLIENT_GAVE_UP,
      reason,
      opened: conn.welcomed,
      httpStatus: null,
      willReconnect: true,
    });
    this.scheduleReconnect(conn.welcomed ? "client_timeout" : "refused", null);
  }

  private dropConn(conn: Conn): void {
    conn.dead = true;
    for (const handle of conn.timers) this.timers.clearTimeout(handle);
    conn.timers.clear();
  }

  private scheduleReconnect(cause: ReconnectCause, hintMs: number | null): void {
    if (this.stopped) return;
    // Failover: the next attempt goes to another gateway.
    if (this.urls.length > 1) {
      if (this.options.failover === "random") {
        const others = this.urls.length - 1;
        this.urlIndex = (this.urlIndex + 1 + (Math.floor(this.random() * others) % others)) % this.urls.length;
      } else {
        this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      }
    }
    const delay = Math.max(backoffDelay(this.attempt, this.backoff, this.random), hintMs ?? 0);
    this.attempt += 1;
    this.stats.reconnects += 1;
    this.waitFor(delay, cause);
  }

  /** Arms the reconnect timer for retry number `this.attempt - 1` and reports the wait. */
  private waitFor(delay: number, cause: ReconnectCause): void {
    const url = this.urls[this.urlIndex] as string;
    this.setState({ status: "reconnecting", retryInMs: delay, attempt: this.attempt, url });
    this.emit("reconnecting", { url, delayMs: delay, attempt: this.attempt - 1, cause });
    this.waitRequested = cause === "try_again_later";
    this.reconnectAt = this.timers.now() + delay;
    this.reconnectTimer = this.timers.setTimeout(() => void this.attemptConnect(), delay);
  }

  // ---- network and page lifecycle ---------------------------------------

  private attachLifecycle(): void {
    const option = this.options.lifecycle;
    if (option === false) return;
    const sources = option ?? browserLifecycle();
    const online = (): void => this.onOnline();
    const visibility = sources.visibility;
    const visible = (): void => {
      if (visibility?.visible() === true) this.probeOpenConnection();
    };
    sources.online?.addEventListener("online", online);
    visibility?.target.addEventListener("visibilitychange", visible);
    this.detachLifecycle = () => {
      sources.online?.removeEventListener("online", online);
      visibility?.target.removeEventListener("visibilitychange", visible);
    };
  }

  /** The network is back: a backoff wait is cut short, an open connection checked. */
  private onOnline(): void {
    if (this.stopped || !this.started) return;
    if (this.reconnectTimer === null) {
      this.probeOpenConnection();
      return;
    }
    if (this.waitRequested) return;
    // Jittered like a first retry, so the clients one network event wakes
    // do not all arrive at the same instant.
    const delay = backoffDelay(0, this.backoff, this.random);
    if (this.timers.now() + delay >= this.reconnectAt) return;
    this.timers.clearTimeout(this.reconnectTimer);
    this.waitFor(delay, "online");
  }

  /** A `ping` now, unless one is out: a connection that died meanwhile is given up within the heartbeat timeout. */
  private probeOpenConnection(): void {
    const conn = this.conn;
    if (this.stopped || conn === null || conn.dead || !conn.welcomed) return;
    const times = this.heartbeatTimes(conn);
    if (times === null || conn.pingSentAt !== null) return;
    conn.pingSentAt = this.timers.now();
    this.send(conn, { type: "ping" });
    this.scheduleHeartbeat(conn, times, times.timeoutMs);
  }

  // ---- frames --------------------------------------------------------

  private onFrame(conn: Conn, data: unknown): void {
    if (conn.dead) return;
    conn.lastRx = this.timers.now();
    conn.pingSentAt = null;
    if (typeof data !== "string") {
      this.reportError(new SurgeError("protocol", "a binary frame from the gateway"));
      return;
    }
    const frame = parseFrame(data);
    if (frame === null) {
      this.reportError(new SurgeError("protocol", `an unreadable frame: ${data.slice(0, 80)}`));
      return;
    }
    this.handleFrame(conn, frame);
  }

  private handleFrame(conn: Conn, frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        this.onWelcome(conn, frame.conn_id, frame.epoch, frame.limits);
        return;
      case "message":
        this.onMessage(conn, frame);
        return;
      case "resume_gap":
        this.onResumeGap(conn, frame.id, frame.oldest_sseq, frame.epoch_changed === true);
        return;
      case "resumed":
        this.onResumed(conn, frame.id, frame.last_sseq, frame.epoch);
        return;
      case "subscribed":
        if (frame.id !== undefined) this.onProbeAnswer(conn, frame.id, null);
        return;
      case "unsubscribed":
        if (frame.reason === "forbidden") this.onRevoked(conn, frame.channels);
        return;
      case "replay_gap":
        return;
      case "replay_done":
        if (conn.replay !== null && frame.id === conn.replay.id) this.finishReplay(conn, frame.withheld ?? []);
        return;
      case "throttle_update": {
        const notice = { level: frame.level, ratePercent: frame.rate_percent, message: frame.message };
        this.setState({ throttle: notice });
        this.emit("throttle", notice);
        return;
      }
      case "token_expiring":
        this.emit("token", { kind: "expiring", expiresInMs: frame.expires_in_ms });
        if (this.options.getToken !== undefined) void this.refreshToken();
        return;
      case "refreshed":
        this.emit("token", { kind: "refreshed", expiresAt: frame.expires_at });
        return;
      case "error":
        this.onServerError(conn, frame.id, frame.code, frame.message);
        return;
      case "pong":
        return;
      default:
        // New message types may appear; the contract says to ignore them.
        return;
    }
  }

  private onWelcome(conn: Conn, connId: string, epoch: string | null, limits: Limits): void {
    conn.welcomed = true;
    conn.connId = connId;
    conn.epoch = epoch;
    conn.limits = limits;
    this.attempt = 0;
    this.setState({ status: "connected", url: conn.url, connId, attempt: 0, retryInMs: null, throttle: null });
    this.emit("connected", { url: conn.url, connId, epoch, limits });
    this.armHeartbeat(conn);
    // Patterns subscribed before: one resume from the anchor, so what was
    // missed arrives once, in order, before anything live.
    const carried = [...this.subs.values()].filter((e) => e.active && e.handlers.size > 0).map((e) => e.pattern);
    if (carried.length > 0 && this.anchor.sseq !== null) {
      this.startResume(conn, {
        kind: "carried",
        channels: carried,
        since: this.anchor.sseq,
        epoch: this.anchor.epoch,
        id: 0,
        recovered: 0,
        sent: false,
        retries: 0,
      });
    }
    this.syncNow();
  }

  private onMessage(conn: Conn, frame: MessageFrame): void {
    if (frame.replayed === true) {
      const replay = conn.replay;
      if (replay !== null && frame.seq >= replay.from && frame.seq <= replay.to) replay.frames.set(frame.seq, frame);
      return;
    }
    if (conn.replay !== null) {
      conn.replay.after.push(frame);
      if (conn.replay.after.length > this.maxBuffered()) this.giveUp(conn, "too many messages held while waiting for a replay");
      return;
    }
    this.sequence(conn, frame);
  }

  /** Checks `seq` continuity; a gap asks for a replay and holds what follows. */
  private sequence(conn: Conn, frame: MessageFrame): void {
    if (frame.seq < conn.expectedSeq) {
      this.stats.duplicates += 1;
      return;
    }
    if (frame.seq > conn.expectedSeq) {
      const id = this.nextId++;
      conn.replay = { id, from: conn.expectedSeq, to: frame.seq - 1, frames: new Map(), after: [frame] };
      this.stats.replayRequests += 1;
      this.send(conn, { type: "replay", from_seq: conn.expectedSeq, to_seq: frame.seq - 1, id });
      const timeout = this.options.replayTimeoutMs ?? 10_000;
      this.later(conn, timeout, () => {
        if (conn.replay?.id === id) this.giveUp(conn, `no replay_done within ${timeout} ms`);
      });
      return;
    }
    conn.expectedSeq += 1;
    this.process(conn, frame);
  }

  /** `withheld`: seqs the server left out because their channel was revoked (not a loss). */
  private finishReplay(conn: Conn, withheld: number[] = []): void {
    const replay = conn.replay;
    if (replay === null) return;
    conn.replay = null;
    const notLost = new Set(withheld);
    let lost = 0;
    for (let seq = replay.from; seq <= replay.to; seq++) {
      const frame = replay.frames.get(seq);
      if (frame === undefined) {
        if (!notLost.has(seq)) lost += 1;
        continue;
      }
      this.process(conn, frame);
    }
    if (lost > 0) this.emit("gap", { kind: "replay", fromSeq: replay.from, toSeq: replay.to, lost });
    conn.expectedSeq = replay.to + 1;
    for (const frame of replay.after) {
      if (conn.dead) return;
      // A frame of `after` may open another gap (and another replay).
      const again = conn.replay as ReplayOp | null;
      if (again !== null) again.after.push(frame);
      else this.sequence(conn, frame);
    }
  }

  private process(conn: Conn, frame: MessageFrame): void {
    if (frame.dropped !== undefined && frame.dropped > 0) {
      this.emit("dropped", { count: frame.dropped, seq: frame.seq, sseq: frame.sseq, subject: frame.subject });
    }
    if (frame.recovered !== true && conn.resume?.kind === "carried") {
      // Live messages wait until the resume has delivered what came before them.
      conn.held.push(frame);
      if (conn.held.length > this.maxBuffered()) this.giveUp(conn, "too many live messages held while resuming");
      return;
    }
    if (frame.recovered === true && conn.resume !== null) conn.resume.recovered += 1;
    this.deliver(conn, frame);
  }

  /**
   * Hands `frame` to the matching handlers, once: a frame at or below the
   * last processed `sseq` is a duplicate when recovered or held during a
   * resume, and means the stream was recreated when it arrives live.
   */
  private deliver(conn: Conn, frame: MessageFrame, held = false): void {
    const last = this.anchor.sseq;
    const recovered = frame.recovered === true;
    if (last !== null && frame.sseq <= last) {
      if (recovered || held) {
        this.stats.duplicates += 1;
        return;
      }
      // Live, yet not after what was processed: the stream was recreated
      // while connected (its sequences start again at 1).
      this.emit("gap", { kind: "stream_reset", previousSseq: last, sseq: frame.sseq });
      this.anchor = { sseq: frame.sseq, epoch: null };
      for (const entry of this.subs.values()) entry.floor = null;
      this.setState({ epoch: null });
    } else {
      const epoch = last === null ? conn.epoch : this.anchor.epoch;
      this.anchor = { sseq: frame.sseq, epoch };
      if (epoch !== this.snapshot.epoch) this.setState({ epoch });
    }
    const message: SurgeMessage = {
      subject: frame.subject,
      data: decodeData(frame),
      sseq: frame.sseq,
      seq: frame.seq,
      recovered,
      encoding: frame.encoding ?? "json",
    };
    if (recovered) this.stats.recovered += 1;
    this.stats.delivered += 1;
    for (const entry of [...this.subs.values()]) {
      if (entry.floor !== null) {
        // A recovered message older than a subscription made mid-connection
        // predates it: not for that subscription's handlers.
        if (recovered && frame.sseq <= entry.floor) continue;
        if (frame.sseq >= entry.floor) entry.floor = null;
      }
      if (!matches(entry.pattern, frame.subject)) continue;
      for (const handler of [...entry.handlers]) {
        try {
          handler.fn(message);
        } catch (error) {
          this.reportError(new SurgeError("handler_error", `a handler of ${entry.pattern} threw: ${String(error)}`, [entry.pattern]));
        }
      }
    }
  }

  // ---- subscriptions and resume ---------------------------------------

  private scheduleSync(): void {
    if (this.syncQueued) return;
    this.syncQueued = true;
    // One microtask later: subscribe/unsubscribe/subscribe in one tick
    // (React StrictMode's double mount) sends nothing twice.
    queueMicrotask(() => {
      this.syncQueued = false;
      for (const [pattern, entry] of this.subs) {
        if (entry.handlers.size === 0) this.subs.delete(pattern);
      }
      this.syncNow();
    });
  }

  /** Brings the connection's subscriptions in line with the handlers. */
  private syncNow(): void {
    const conn = this.conn;
    if (conn === null || conn.dead || !conn.welcomed) return;
    if (conn.resume !== null) return; // again when it completes
    const wanted = new Set(this.patterns());
    const removed = [...conn.wire].filter((p) => !wanted.has(p));
    if (removed.length > 0) {
      for (const p of removed) conn.wire.delete(p);
      this.send(conn, { type: "unsubscribe", channels: removed, id: this.nextId++ });
    }
    const added = [...wanted].filter((p) => !conn.wire.has(p));
    if (added.length === 0) return;
    const kind: ResumeKind = conn.wire.size === 0 ? "anchor" : "fresh";
    this.startResume(conn, {
      kind,
      channels: added,
      since: RESUME_FROM_NOW,
      epoch: null,
      id: 0,
      recovered: 0,
      sent: false,
      retries: 0,
    });
  }

  private startResume(conn: Conn, op: ResumeOp): void {
    for (const p of op.channels) conn.wire.add(p);
    op.id = this.nextId++;
    op.sent = true;
    conn.resume = op;
    const request: Record<string, unknown> = { type: "resume", channels: op.channels, since_sseq: op.since, id: op.id };
    if (op.kind === "carried" && op.epoch !== null) request["epoch"] = op.epoch;
    this.send(conn, request);
  }

  private onResumeGap(conn: Conn, id: number | undefined, oldestSseq: number, epochChanged: boolean): void {
    const op = conn.resume;
    if (op === null || id !== op.id || op.kind !== "carried") return;
    if (epochChanged) {
      this.emit("gap", { kind: "epoch_changed", previousEpoch: op.epoch, oldestSseq });
      // Sequences of the old stream mean nothing in the new one.
      this.anchor = { sseq: null, epoch: null };
      for (const entry of this.subs.values()) entry.floor = null;
    } else {
      this.emit("gap", { kind: "retention", sinceSseq: op.since, oldestSseq });
    }
  }

  private onResumed(conn: Conn, id: number | undefined, lastSseq: number, epoch: string): void {
    const op = conn.resume;
    if (op === null || id !== op.id) return;
    conn.resume = null;
    for (const p of op.channels) {
      const entry = this.subs.get(p);
      if (entry === undefined) continue;
      entry.active = true;
      if (op.kind === "fresh") entry.floor = lastSseq;
    }
    if (op.kind === "carried") {
      // Everything on the channels up to lastSseq has been delivered.
      const current = this.anchor.sseq;
      this.anchor = { sseq: current === null ? lastSseq : Math.max(current, lastSseq), epoch };
      this.setState({ epoch });
    } else if (op.kind === "anchor") {
      // The first channels on this connection: they start at lastSseq.
      this.anchor = { sseq: lastSseq, epoch };
      for (const entry of this.subs.values()) entry.floor = null;
      this.setState({ epoch });
    }
    this.emit("resumed", { channels: op.channels, lastSseq, epoch, recovered: op.recovered });
    this.nextResume(conn);
  }

  /** The resume in flight is over: live messages held for it go out, then the next request. */
  private nextResume(conn: Conn): void {
    conn.resume = null;
    const held = conn.held;
    conn.held = [];
    for (const frame of held) {
      if (conn.dead) return;
      this.deliver(conn, frame, true);
    }
    // Subscription changes made meanwhile (one resume at a time).
    this.syncNow();
  }

  /** Channels the server removed because a refreshed token no longer covers them. */
  private onRevoked(conn: Conn, channels: string[]): void {
    for (const p of channels) {
      conn.wire.delete(p);
      this.reject(p, new SurgeError("forbidden", `the refreshed token no longer covers ${p}`, [p]));
    }
  }

  private reject(pattern: string, error: SurgeError): void {
    const entry = this.subs.get(pattern);
    this.subs.delete(pattern);
    if (entry !== undefined) {
      for (const handler of entry.handlers) {
        try {
          handler.onError?.(error);
        } catch (e) {
          this.reportError(new SurgeError("handler_error", `an onError of ${pattern} threw: ${String(e)}`, [pattern]));
        }
      }
    }
    this.reportError(error);
  }

  private onServerError(conn: Conn, id: number | undefined, code: string, message: string): void {
    if (id !== undefined && conn.probes.has(id)) {
      this.onProbeAnswer(conn, id, new SurgeError(code, message));
      return;
    }
    const op = conn.resume;
    if (op !== null && id === op.id) {
      this.onResumeError(conn, op, code, message);
      return;
    }
    if (conn.replay !== null && id === conn.replay.id) {
      // The server cannot replay (queue full, range): resume from the anchor instead.
      this.giveUp(conn, `replay refused (${code}): reconnecting to resume`);
      return;
    }
    this.reportError(new SurgeError(code, message));
    if (code === "invalid_token") this.tokenInvalid = true;
  }

  private onResumeError(conn: Conn, op: ResumeOp, code: string, message: string): void {
    if (code === "broker_unavailable") {
      // The channels stay subscribed. Retry recovering from the anchor; live
      // messages stay held until then, so nothing arrives out of order.
      this.reportError(new SurgeError(code, message, op.channels));
      if (op.kind !== "carried") {
        conn.resume = null;
        for (const p of op.channels) {
          const entry = this.subs.get(p);
          if (entry !== undefined) entry.active = true;
        }
        this.nextResume(conn);
        return;
      }
      op.retries += 1;
      this.later(conn, backoffDelay(op.retries, { baseMs: 500, capMs: this.backoff.capMs }, this.random), () => {
        if (conn.resume === op) this.startResume(conn, op);
      });
      return;
    }
    if (code === "rate_limited") {
      const rate = conn.limits?.client_rate_per_sec ?? 20;
      this.later(conn, rate > 0 ? Math.ceil(1000 / rate) + 50 : 100, () => {
        if (conn.resume === op) this.startResume(conn, op);
      });
      return;
    }
    if ((code === "forbidden" || code === "invalid_subject" || code === "too_many_subscriptions") && op.channels.length > 1) {
      // All or nothing: find out which channels are refused, one by one,
      // then resume the rest. The resume stays in progress meanwhile.
      for (const p of op.channels) conn.wire.delete(p);
      for (const channel of op.channels) {
        const id = this.nextId++;
        conn.probes.set(id, { op, channel });
        this.send(conn, { type: "subscribe", channels: [channel], id });
      }
      return;
    }
    conn.resume = null;
    for (const p of op.channels) {
      conn.wire.delete(p);
      this.reject(p, new SurgeError(code, message, [p]));
    }
    this.nextResume(conn);
  }

  private onProbeAnswer(conn: Conn, id: number, error: SurgeError | null): void {
    const probe = conn.probes.get(id);
    if (probe === undefined) return;
    conn.probes.delete(id);
    const { op, channel } = probe;
    if (error !== null) {
      op.channels = op.channels.filter((c) => c !== channel);
      this.reject(channel, new SurgeError(error.code, error.message, [channel]));
    } else {
      conn.wire.add(channel);
    }
    const pending = [...conn.probes.values()].some((p) => p.op === op);
    if (pending || conn.resume !== op) return;
    op.channels = op.channels.filter((c) => (this.subs.get(c)?.handlers.size ?? 0) > 0);
    if (op.channels.length > 0) {
      this.startResume(conn, op);
    } else {
      conn.resume = null;
      this.nextResume(conn);
    }
  }

  // ---- heartbeat -------------------------------------------------------

  private heartbeatTimes(conn: Conn): HeartbeatTimes | null {
    const option = this.options.heartbeat;
    if (option === false) return null;
    return {
      intervalMs: option?.intervalMs ?? conn.limits?.ping_interval_ms ?? 25_000,
      timeoutMs: option?.timeoutMs ?? 10_000,
    };
  }

  private armHeartbeat(conn: Conn): void {
    const times = this.heartbeatTimes(conn);
    if (times !== null) this.scheduleHeartbeat(conn, times, times.intervalMs);
  }

  /** The connection's one heartbeat check, `ms` from now (replacing any pending one). */
  private scheduleHeartbeat(conn: Conn, times: HeartbeatTimes, ms: number): void {
    if (conn.heartbeat !== null) {
      this.timers.clearTimeout(conn.heartbeat);
      conn.timers.delete(conn.heartbeat);
    }
    conn.heartbeat = this.later(conn, ms, () => {
      conn.heartbeat = null;
      this.heartbeatCheck(conn, times);
    });
  }

  private heartbeatCheck(conn: Conn, times: HeartbeatTimes): void {
    if (conn.dead) return;
    const { intervalMs: interval, timeoutMs: timeout } = times;
    const now = this.timers.now();
    if (conn.pingSentAt !== null) {
      if (now - conn.pingSentAt >= timeout) {
        this.giveUp(conn, `heartbeat timeout: nothing received for ${now - conn.lastRx} ms`);
        return;
      }
      this.scheduleHeartbeat(conn, times, conn.pingSentAt + timeout - now);
      return;
    }
    const idle = now - conn.lastRx;
    if (idle >= interval) {
      conn.pingSentAt = now;
      this.send(conn, { type: "ping" });
      this.scheduleHeartbeat(conn, times, timeout);
    } else {
      this.scheduleHeartbeat(conn, times, interval - idle);
    }
  }

  // ---- helpers -----------------------------------------------------------

  private later(conn: Conn, ms: number, fn: () => void): unknown {
    const handle = this.timers.setTimeout(() => {
      conn.timers.delete(handle);
      fn();
    }, Math.max(0, ms));
    conn.timers.add(handle);
    return handle;
  }

  private send(conn: Conn, request: Record<string, unknown>): void {
    if (conn.dead) return;
    try {
      conn.ws.send(JSON.stringify(request));
    } catch (error) {
      this.reportError(new SurgeError("protocol", `send failed: ${String(error)}`));
    }
  }

  private maxBuffered(): number {
    return this.options.maxBufferedMessages ?? 10_000;
  }

  private setState(change: Partial<ClientState>): void {
    this.snapshot = { ...this.snapshot, ...change };
    this.emit("state", this.snapshot);
  }

  private emit<K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]): void {
    this.events.emit(event, payload, (error) => {
      if (event !== "error") {
        this.reportError(new SurgeError("handler_error", `a ${String(event)} listener threw: ${String(error)}`));
      }
    });
  }

  private reportError(error: SurgeError): void {
    this.events.emit("error", error, () => undefined);
  }
}

function withToken(url: string, token: string | null): string {
  if (token === null) return url;
  const hash = url.indexOf("#");
  const base = hash >= 0 ? url.slice(0, hash) : url;
  const separator = base.includes("?") ? "&" : "?";
  return `${base}${separator}token=${encodeURIComponent(token)}`;
}

function decodeData(frame: MessageFrame): unknown {
  if (frame.encoding === "base64" && typeof frame.data === "string") {
    return Uint8Array.from(atob(frame.data), (c) => c.charCodeAt(0));
  }
  return frame.data;
}
