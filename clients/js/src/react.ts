/**
 * React bindings: `<SurgeProvider client={client}>`, `useChannel`,
 * `useSurgeState`, `useSurgeEvent`. The client is created outside React
 * (once, e.g. at module level) and handed to the provider, so a render —
 * or StrictMode's double render — never opens a connection.
 */
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useRef,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from "react";
import type { SurgeClient } from "./client.js";
import type { ClientEvents, ClientState, MessageHandler, SurgeError } from "./types.js";

const SurgeContext = createContext<SurgeClient | null>(null);

export interface SurgeProviderProps {
  client: SurgeClient;
  children?: ReactNode;
}

export function SurgeProvider(props: SurgeProviderProps): ReactElement {
  return createElement(SurgeContext.Provider, { value: props.client }, props.children);
}

/** The client of the nearest `SurgeProvider`. */
export function useSurgeClient(): SurgeClient {
  const client = useContext(SurgeContext);
  if (client === null) throw new Error("useSurgeClient: no <SurgeProvider client={…}> above this component");
  return client;
}

/**
 * Calls `handler` for every message matching `pattern` while the component
 * is mounted (`null` subscribes to nothing). The latest `handler` is used
 * without resubscribing; the subscription is removed on unmount or when
 * `pattern` changes.
 */
export function useChannel<T = unknown>(
  pattern: string | null,
  handler: MessageHandler<T>,
  onError?: (error: SurgeError) => void,
): void {
  const client = useSurgeClient();
  const latest = useRef({ handler, onError });
  latest.current = { handler, onError };
  useEffect(() => {
    if (pattern === null) return undefined;
    const subscription = client.subscribe<T>(pattern, (message) => latest.current.handler(message), {
      onError: (error) => latest.current.onError?.(error),
    });
    return () => subscription.unsubscribe();
  }, [client, pattern]);
}

/** The client's state; the component re-renders when it changes. */
export function useSurgeState(): ClientState {
  const client = useSurgeClient();
  return useSyncExternalStore(
    (onChange) => client.on("state", onChange),
    () => client.state,
    () => client.state,
  );
}

/** Calls `listener` for each `event` of the client while mounted (e.g. `gap`, to refetch a snapshot). */
export function useSurgeEvent<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): void {
  const client = useSurgeClient();
  const latest = useRef(listener);
  latest.current = listener;
  useEffect(() => client.on(event, (payload) => latest.current(payload)), [client, event]);
}
