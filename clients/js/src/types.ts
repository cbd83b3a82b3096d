import type { Limits } from "./protocol.js";

/**
 * What the client needs of a WebSocket: the browser's `WebSocket` and the
 * `ws` package's both fit. Listeners are added once per socket and never
 * removed; the client ignores a socket it has given up on.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // `any`: the DOM's and ws's event types differ; the client reads only
  // `data` (message), `code` and `reason` (close) and `message` (error).
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  addEventListener(type: "open" | "message" | "close" | "error", listener: (event: any) => void): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Timers and clock, replaceable for tests. */
export interface Timers {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export type Status = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ThrottleNotice {
  /** 0 (none) to 3 (heavy). */
  level: number;
  /** Share of medium-priority messages the connection receives: 100, 75, 50 or 25. */
  ratePercent: number;
  /** A sentence that can be shown to a user. */
  message: string;
}

/** A snapshot of the client's state; a new object every time something in it changes. */
export interface ClientState {
  status: Status;
  /** The gateway in use, or being tried. */
  url: string | null;
  connId: string | null;
  /** The stream epoch of the messages processed (see `position()` for the last `sseq`). */
  epoch: string | null;
  /** Failed attempts since the last connection that reached `welcome`. */
  attempt: number;
  /** While `reconnecting`: the delay before the next attempt. */
  retryInMs: number | null;
  throttle: ThrottleNotice | null;
  lastClose: { code: number; reason: string } | null;
}

/** One message, as handed to subscription handlers. */
export interface SurgeMessage<T = unknown> {
  subject: string;
  /** The payload: JSON as parsed; text as a string; other bytes as a Uint8Array (see `encoding`). */
  data: T;
  /** Stream sequence: identifies the message in the stream (its epoch). */
  sseq: number;
  /** This connection's message number. */
  seq: number;
  /** Delivered by a resume, from the stream's retention, rather than live. */
  recovered: boolean;
  encoding: "json" | "text" | "base64";
}

export type MessageHandler<T = unknown> = (message: SurgeMessage<T>) => void;

/** Messages the client could not get; the app decides (e.g. refetch a snapshot). */
export type Gap =
  /** The stream no longer retains everything after the client's last `sseq`. */
  | { kind: "retention"; sinceSseq: number; oldestSseq: number }
  /** The stream is another one (recreated, or an embedded broker restarted): refetch state. */
  | { kind: "epoch_changed"; previousEpoch: string | null; oldestSseq: number }
  /** A live `seq` gap that `replay` could not fill completely. */
  | { kind: "replay"; fromSeq: number; toSeq: number; lost: number }
  /** A live message's `sseq` went backwards: the stream was recreated while connected. */
  | { kind: "stream_reset"; previousSseq: number; sseq: number };

export type ReconnectCause =
  /** The socket closed before `welcome`: refused (full, 401, …) or unreachable; a browser cannot tell which. */
  | "refused"
  /** An open connection closed. */
  | "closed"
  /** 1013: the gateway asked to try again later. */
  | "try_again_later"
  /** 4001: the token expired; a new one is fetched before the attempt. */
  | "token_expired"
  /** The client gave up on a connection (heartbeat, connect timeout, replay timeout, buffer bound). */
  | "client_timeout"
  /** The network came back (`online`) during a backoff wait: the wait was cut short. */
  | "online";

export interface TokenEvent {
  kind: "expiring" | "refreshed";
  /** For `expiring`: how long the current token has left. */
  expiresInMs?: number;
  /** For `refreshed`: the new token's `exp` in Unix ms. */
  expiresAt?: number;
}

export interface ClientEvents {
  state: ClientState;
  connecting: { url: string; attempt: number };
  connected: { url: string; connId: string; epoch: string | null; limits: Limits };
  disconnected: {
    url: string;
    code: number;
    reason: string;
    /** Whether the connection had reached `welcome`. */
    opened: boolean;
    /** The HTTP status of a refused upgrade, when the WebSocket implementation reports it (Node's `ws` does, browsers do not). */
    httpStatus: number | null;
    willReconnect: boolean;
  };
  reconnecting: { url: string; delayMs: number; attempt: number; cause: ReconnectCause };
  resumed: { channels: string[]; lastSseq: number; epoch: string; recovered: number };
  gap: Gap;
  /** A live message after a loss: `count` messages matching the subscriptions were skipped (throttled or queue full). */
  dropped: { count: number; seq: number; sseq: number; subject: string };
  throttle: ThrottleNotice;
  token: TokenEvent;
  error: SurgeError;
}

/**
 * An error the app may act on. `code` is the server's error code
 * (`forbidden`, `invalid_subject`, `too_many_subscriptions`,
 * `invalid_token`, `broker_unavailable`, …) or one of the client's own:
 * `handler_error`, `token_unavailable`, `token_expired`, `protocol`.
 */
export class SurgeError extends Error {
  readonly code: string;
  readonly channels: readonly string[];
  constructor(code: string, message: string, channels: readonly string[] = []) {
    super(message);
    this.name = "SurgeError";
    this.code = code;
    this.channels = channels;
  }
}

export interface Subscription {
  readonly pattern: string;
  /** Removes this handler; the channel is unsubscribed when no handler is left. Idempotent. */
  unsubscribe(): void;
}

export interface SubscribeOptions {
  /** Called when the server refuses the channel (forbidden, invalid, too many); the subscription is then removed. */
  onError?: (error: SurgeError) => void;
}
