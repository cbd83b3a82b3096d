/** An in-memory WebSocket and a manual clock, to drive the client frame by frame. */
import type { Timers, WebSocketLike } from "../../src/index.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (event: any) => void;

export class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  readonly url: string;
  readonly sent: Record<string, unknown>[] = [];
  closedWith: { code?: number | undefined; reason?: string | undefined } | null = null;
  private readonly listeners = new Map<string, Listener[]>();

  constructor(url: string) {
    this.url = url;
    FakeSocket.all.push(this);
  }

  static reset(): void {
    FakeSocket.all = [];
  }

  static last(): FakeSocket {
    const socket = FakeSocket.all[FakeSocket.all.length - 1];
    if (socket === undefined) throw new Error("no socket was opened");
    return socket;
  }

  addEventListener(type: string, listener: Listener): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  private fire(type: string, event: unknown): void {
    for (const l of this.listeners.get(type) ?? []) (l as (e: unknown) => void)(event);
  }

  /** The server's 101 and welcome. */
  open(epoch: string | null = "e-1", limits: Partial<Record<string, number>> = {}): void {
    this.readyState = 1;
    this.fire("open", {});
    this.receive({
      type: "welcome",
      conn_id: "0-1",
      shard: 0,
      epoch,
      limits: {
        max_subscriptions: 100,
        replay_window: 100,
        max_message_bytes: 16384,
        client_rate_per_sec: 20,
        client_burst: 40,
        ping_interval_ms: 25000,
        idle_timeout_ms: 60000,
        ...limits,
      },
    });
  }

  receive(frame: Record<string, unknown>): void {
    this.fire("message", { data: JSON.stringify(frame) });
  }

  /** A message frame. */
  message(seq: number, sseq: number, subject: string, data: unknown, extra: Record<string, unknown> = {}): void {
    this.receive({ type: "message", seq, sseq, subject, data, ...extra });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.fire("close", { code, reason });
  }

  /** The requests of a type sent so far. */
  requests(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f["type"] === type);
  }

  lastRequest(type: string): Record<string, unknown> {
    const list = this.requests(type);
    const last = list[list.length - 1];
    if (last === undefined) throw new Error(`no ${type} request was sent; sent: ${JSON.stringify(this.sent)}`);
    return last;
  }
}

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
}

export class ManualTimers implements Timers {
  private time = 1_000_000;
  private nextSeq = 0;
  private pending = new Map<number, Pending>();

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const seq = this.nextSeq++;
    this.pending.set(seq, { at: this.time + ms, seq, fn: callback });
    return seq;
  }

  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }

  /** Runs every timer due within `ms`, in order, moving the clock along. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (let guard = 0; guard < 10_000; guard++) {
      let next: Pending | undefined;
      for (const p of this.pending.values()) {
        if (p.at <= end && (next === undefined || p.at < next.at || (p.at === next.at && p.seq < next.seq))) next = p;
      }
      if (next === undefined) break;
      this.pending.delete(next.seq);
      this.time = Math.max(this.time, next.at);
      next.fn();
    }
    this.time = end;
  }

  /** Delays of the timers still pending, from now. */
  delays(): number[] {
    return [...this.pending.values()].map((p) => p.at - this.time).sort((a, b) => a - b);
  }
}

/** Lets queued microtasks and promise continuations run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
