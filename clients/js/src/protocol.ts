/** The frames of surge's wire protocol that this client reads (docs/PROTOCOL.md). */

export interface Limits {
  max_subscriptions: number;
  replay_window: number;
  max_message_bytes: number;
  client_rate_per_sec: number;
  client_burst: number;
  ping_interval_ms: number;
  idle_timeout_ms: number;
}

export interface WelcomeFrame {
  type: "welcome";
  conn_id: string;
  shard: number;
  epoch: string | null;
  limits: Limits;
}

export interface MessageFrame {
  type: "message";
  seq: number;
  subject: string;
  sseq: number;
  data: unknown;
  encoding?: "text" | "base64";
  replayed?: boolean;
  recovered?: boolean;
  dropped?: number;
}

export type RequestId = number;

export type ServerFrame =
  | WelcomeFrame
  | MessageFrame
  | { type: "subscribed"; id?: RequestId; channels: string[] }
  | { type: "unsubscribed"; id?: RequestId; channels: string[]; reason?: string }
  | { type: "replay_gap"; id?: RequestId; from_seq: number; to_seq: number; oldest_seq: number }
  | { type: "replay_done"; id?: RequestId; from_seq: number; to_seq: number; withheld?: number[] }
  | { type: "resume_gap"; id?: RequestId; oldest_sseq: number; epoch_changed?: boolean }
  | { type: "resumed"; id?: RequestId; channels: string[]; last_sseq: number; epoch: string }
  | { type: "pong"; id?: RequestId }
  | { type: "throttle_update"; level: number; rate_percent: number; message: string }
  | { type: "token_expiring"; expires_in_ms: number }
  | { type: "refreshed"; id?: RequestId; expires_at: number }
  | { type: "error"; id?: RequestId; code: string; message: string };

/** Reads one text frame; `null` for anything that is not a JSON object with a string `type`. */
export function parseFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || typeof (value as { type?: unknown }).type !== "string") {
    return null;
  }
  return value as ServerFrame;
}

/**
 * `since_sseq` for a resume that recovers nothing and only anchors: at or
 * past the stream's end, so the server recovers nothing, reports no gap and
 * answers `resumed` with the stream's current `last_sseq`.
 */
export const RESUME_FROM_NOW = Number.MAX_SAFE_INTEGER;
