/**
 * Adapters for React Native and tests, outside the core bundle:
 * `import { reactNativeLifecycle, memoryStorage } from "@sluice/client/adapters"`.
 */
import type { Lifecycle } from "./lifecycle.js";
import type { KeyValueStorage } from "./storage.js";

/** The part of React Native's `AppState` the adapter uses. */
export interface AppStateLike {
  addEventListener(type: "change", fn: (state: string) => void): { remove(): void };
}

/** The part of `@react-native-community/netinfo`'s default export the adapter uses. */
export interface NetInfoLike {
  addEventListener(fn: (state: { isConnected: boolean | null; type?: string }) => void): () => void;
}

/**
 * React Native's: `AppState` (`active` is the foreground, `background` the
 * background; `inactive`, iOS's passing state, is neither) and, if given,
 * NetInfo (connected: `online`, also when the network changes, e.g. Wi-Fi
 * to cellular; disconnected: `offline`). Pass the modules in: the client
 * imports nothing of React Native.
 */
export function reactNativeLifecycle(appState: AppStateLike, netInfo?: NetInfoLike): Lifecycle {
  return {
    subscribe(listener) {
      const app = appState.addEventListener("change", (s) => {
        if (s === "active") listener("foreground");
        else if (s === "background") listener("background");
      });
      let last: string | undefined;
      const net = netInfo?.addEventListener(({ isConnected, type }) => {
        const now = isConnected === false ? "offline" : isConnected ? `online:${type}` : undefined;
        if (now === undefined || now === last) return;
        // The first report is the state at start, not a change.
        const first = last === undefined;
        last = now;
        if (!first) listener(isConnected ? "online" : "offline");
      });
      return () => {
        app.remove();
        net?.();
      };
    },
  };
}

/** A storage in memory (the default: the queue lives as long as the client). */
export function memoryStorage(): KeyValueStorage {
  const items = new Map<string, string>();
  return {
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => void items.set(k, v),
    removeItem: (k) => void items.delete(k),
  };
}
