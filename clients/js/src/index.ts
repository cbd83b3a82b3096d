export { connect, SurgeClient, CLIENT_GAVE_UP, type ClientOptions, type LifecycleSources, type LifecycleTarget } from "./client.js";
export { backoffDelay, backoffCeiling, retryHintMs, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { matches, patternError } from "./patterns.js";
export { tokenExpiresAt } from "./token.js";
export { RESUME_FROM_NOW, type Limits } from "./protocol.js";
export {
  SurgeError,
  type ClientEvents,
  type ClientState,
  type Gap,
  type MessageHandler,
  type ReconnectCause,
  type Status,
  type SubscribeOptions,
  type Subscription,
  type SurgeMessage,
  type ThrottleNotice,
  type Timers,
  type TokenEvent,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";
