/**
 * React and React Native hooks over `@sluice/client`. The app makes one
 * client and hands it to a {@link SluiceProvider}; components use the hooks.
 * Nothing here touches the DOM.
 */
import { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import type {
  ConnectionState,
  PresenceMember,
  RecoveryFailed,
  SluiceClient,
  SluiceError,
  SluiceEvent,
  SubscribeOptions,
  Subscription,
  Welcome,
} from "@sluice/client";

interface Shared {
  client: SluiceClient;
  /** Subscriptions shared by every hook on a channel, counted. */
  subs: Map<string, { sub: Subscription; refs: number }>;
}

const Context = createContext<Shared | undefined>(undefined);

/** Gives its children the client; connects it when mounted (the app closes it). */
export function SluiceProvider({ client, children }: { client: SluiceClient; children?: ReactNode }) {
  const [shared] = useState<Shared>(() => ({ client, subs: new Map() }));
  useEffect(() => {
    client.connect().catch(() => undefined);
  }, [client]);
  return createElement(Context.Provider, { value: shared }, children);
}

function useShared(): Shared {
  const shared = useContext(Context);
  if (!shared) throw new Error("a Sluice hook outside <SluiceProvider>");
  return shared;
}

/** The client, its connection state and its current welcome. */
export function useSluice(): { client: SluiceClient; state: ConnectionState; welcome: Welcome | undefined } {
  const { client } = useShared();
  const [state, setState] = useState(client.state);
  useEffect(() => {
    setState(client.state);
    return client.on("state", setState);
  }, [client]);
  return { client, state, welcome: client.welcome };
}

/** The subscription to `channel`, shared by every hook on it while one is mounted. */
function useSubscription(channel: string, options: SubscribeOptions | undefined, attach: (sub: Subscription) => () => void): void {
  const shared = useShared();
  const attachRef = useRef(attach);
  attachRef.current = attach;
  useEffect(() => {
    let held = shared.subs.get(channel);
    if (!held) shared.subs.set(channel, (held = { sub: shared.client.subscribe(channel, options), refs: 0 }));
    held.refs++;
    const h = held;
    const detach = attachRef.current(h.sub);
    return () => {
      detach();
      if (--h.refs === 0 && shared.subs.get(channel) === h) {
        shared.subs.delete(channel);
        h.sub.unsubscribe().catch(() => undefined);
      }
    };
    // The options of the first hook on a channel are the subscription's.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shared, channel]);
}

/** What {@link useChannel} returns. */
export interface ChannelState {
  /** The last `limit` events, oldest first. */
  events: SluiceEvent[];
  /** Acknowledged on the current connection. */
  active: boolean;
  /** What the last (re)subscription said of recovery (see `Subscribed.recovered`). */
  recovered: boolean | undefined;
  /** Set when a resubscription could not recover what was missed: refetch. */
  recoveryFailed: RecoveryFailed | undefined;
  /** The subscription ended (refused, or dropped). */
  error: SluiceError | undefined;
}

/** Subscribe to `channel` while mounted; its events (the last `limit`, default 100) and recovery state. */
export function useChannel(channel: string, options?: SubscribeOptions & { limit?: number }): ChannelState {
  const limit = options?.limit ?? 100;
  const [state, setState] = useState<ChannelState>({ events: [], active: false, recovered: undefined, recoveryFailed: undefined, error: undefined });
  const { client } = useShared();
  useSubscription(channel, options, (sub) => {
    const set = (patch: Partial<ChannelState>) => setState((s) => ({ ...s, ...patch }));
    set({ active: sub.active });
    const offs = [
      client.on("state", (c) => c !== "open" && set({ active: false })),
      sub.on("event", (e) => setState((s) => ({ ...s, events: [...s.events, e].slice(-limit) }))),
      sub.on("subscribed", (x) => set({ active: true, recovered: x.recovered })),
      sub.on("recoveryFailed", (f) => set({ recoveryFailed: f })),
      sub.on("error", (error) => set({ active: false, error })),
    ];
    return () => offs.forEach((off) => off());
  });
  return state;
}

/** Who is on `channel` (a channel with presence): asked after every (re)subscription, kept up to date by join and leave. */
export function usePresence(channel: string, options?: SubscribeOptions): { members: PresenceMember[]; truncated: boolean; error: SluiceError | undefined } {
  const [state, setState] = useState({ members: [] as PresenceMember[], truncated: false, error: undefined as SluiceError | undefined });
  useSubscription(channel, options, (sub) => {
    const ask = () =>
      sub.presence().then(
        (p) => setState({ ...p, error: undefined }),
        (error: SluiceError) => setState((s) => ({ ...s, error })),
      );
    if (sub.active) void ask();
    const offs = [
      sub.on("subscribed", () => void ask()),
      sub.on("join", ({ subject, claims }) =>
        setState((s) => ({
          ...s,
          members: s.members.some((m) => m.subject === subject) ? s.members : [...s.members, { subject, connections: 1, claims }],
        })),
      ),
      sub.on("leave", ({ subject }) => setState((s) => ({ ...s, members: s.members.filter((m) => m.subject !== subject) }))),
    ];
    return () => offs.forEach((off) => off());
  });
  return state;
}

/** What {@link useRequest} returns. */
export interface RequestState<T> {
  status: "idle" | "pending" | "ack" | "error";
  data: T | undefined;
  error: SluiceError | undefined;
  /** The last request's idempotency key. */
  key: string | undefined;
  /** Send a request with a new key. */
  send(data?: unknown, options?: { channel?: string; key?: string }): Promise<T>;
  /** Send the last request again with its key: the server answers with its first outcome instead of running it twice. */
  retry(): Promise<T>;
}

let counter = 0;
const newKey = () => `r${Date.now().toString(36)}${(++counter).toString(36)}${Math.random().toString(36).slice(2, 10)}`;

/** Requests of `type`: their state (pending, ack, error), and a retry that cannot apply twice. */
export function useRequest<T = unknown>(type: string, defaults?: { channel?: string }): RequestState<T> {
  const { client } = useShared();
  const [s, setS] = useState<Pick<RequestState<T>, "status" | "data" | "error" | "key">>({ status: "idle", data: undefined, error: undefined, key: undefined });
  const last = useRef<{ data: unknown; channel?: string; key: string } | undefined>(undefined);
  const run = useCallback(
    (req: { data: unknown; channel?: string; key: string }) => {
      last.current = req;
      setS({ status: "pending", data: undefined, error: undefined, key: req.key });
      const p = client.request<T>(type, req.data, { channel: req.channel, key: req.key });
      p.then(
        (data) => last.current === req && setS({ status: "ack", data, error: undefined, key: req.key }),
        (error: SluiceError) => last.current === req && setS({ status: "error", data: undefined, error, key: req.key }),
      );
      return p;
    },
    [client, type],
  );
  const send = useCallback(
    (data?: unknown, o?: { channel?: string; key?: string }) => run({ data, channel: o?.channel ?? defaults?.channel, key: o?.key ?? newKey() }),
    [run, defaults?.channel],
  );
  const retry = useCallback(() => (last.current ? run(last.current) : Promise.reject(new Error("nothing to retry"))), [run]);
  return { ...s, send, retry };
}
