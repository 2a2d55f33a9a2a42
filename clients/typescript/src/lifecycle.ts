/**
 * The app's lifecycle, as the client needs it: in the foreground or the
 * background, and the network coming and going. An adapter turns a
 * platform's events into these; the core depends on no platform.
 */

/** What happened to the app or its network. */
export type LifecycleEvent = "foreground" | "background" | "online" | "offline";

/** A source of {@link LifecycleEvent}s (see `browserLifecycle`, `reactNativeLifecycle`). */
export interface Lifecycle {
  /** Start listening; returns the function that stops. */
  subscribe(listener: (event: LifecycleEvent) => void): () => void;
}

interface EventSource {
  addEventListener?(name: string, fn: () => void): void;
  removeEventListener?(name: string, fn: () => void): void;
  document?: { visibilityState?: string } & EventSource;
}

/**
 * The browser's: `visibilitychange` (a hidden page is in the background)
 * and `online`/`offline`. What the client uses by default where there is a
 * `document`.
 */
export function browserLifecycle(target: unknown = globalThis): Lifecycle {
  const w = target as EventSource;
  return {
    subscribe(listener) {
      const doc = w.document;
      const visibility = (): void => listener(doc?.visibilityState === "hidden" ? "background" : "foreground");
      const online = (): void => listener("online");
      const offline = (): void => listener("offline");
      doc?.addEventListener?.("visibilitychange", visibility);
      w.addEventListener?.("online", online);
      w.addEventListener?.("offline", offline);
      return () => {
        doc?.removeEventListener?.("visibilitychange", visibility);
        w.removeEventListener?.("online", online);
        w.removeEventListener?.("offline", offline);
      };
    },
  };
}
