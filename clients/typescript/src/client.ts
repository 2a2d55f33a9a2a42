import { ClientErrorCode, SluiceError } from "./errors.js";
import { backoffDelay, checkUrl, closeDecision, DEFAULT_BACKOFF, type BackoffOptions } from "./policy.js";
import { Emitter, EventStream } from "./stream.js";
import { browserLifecycle, type Lifecycle, type LifecycleEvent } from "./lifecycle.js";
import type { KeyValueStorage } from "./storage.js";

/** The subprotocol Sluice speaks. */
export const SUBPROTOCOL = "sluice.v1";

/** Timers looked up on each call, so fake clocks in tests take effect. */
interface Platform {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
  addEventListener?(name: string, fn: () => void): void;
  WebSocket?: WebSocketConstructor;
  location?: unknown;
  navigator?: { product?: string };
  crypto?: { getRandomValues?(a: Uint8Array): Uint8Array };
}
const platform = globalThis as unknown as Platform;
const later = (fn: () => void, ms: number): unknown => platform.setTimeout(fn, ms);
const cancel = (id: unknown): void => {
  if (id !== undefined) platform.clearTimeout(id);
};

/**
 * A WebSocket class: the browser's and React Native's global one, or Node's
 * `ws` package (`import WebSocket from "ws"`). Called as
 * `new WebSocket(url, protocols, options)`; `options` (headers, `ca`) is
 * passed only where `tokenIn` is `"header"` or `webSocketOptions` is set.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type WebSocketConstructor = new (url: string, protocols?: string | string[], ...rest: any[]) => any;

/** The parts of a WebSocket the client uses (the standard browser API). */
interface Socket {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Options of {@link SluiceClient}. */
export interface ClientOptions {
  /**
   * `wss://host/ws/<tenant>`. `ws://` (plaintext) is refused (a
   * `TypeError` from the constructor) except for `localhost`, `127.0.0.1`
   * and `[::1]`.
   */
  url: string;
  /**
   * Returns a token for the tenant (a JWT). Called before every connection
   * attempt and before the current token expires (then sent as `refresh`).
   */
  getToken: () => string | Promise<string>;
  /** The WebSocket class; default the global `WebSocket`. In Node pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /**
   * Where the token goes: `"subprotocol"` (`["sluice.v1", "bearer.<token>"]`,
   * the only way in browsers) or `"header"` (`Authorization: Bearer`, for
   * `ws` in Node and React Native). Default: `"subprotocol"` in browsers,
   * `"header"` elsewhere.
   */
  tokenIn?: "header" | "subprotocol";
  /** Extra options for the WebSocket constructor's third argument (e.g. `ws`'s `ca`). */
  webSocketOptions?: Record<string, unknown>;
  /** How long a request waits for its answer, queued time included (default 10000 ms). */
  requestTimeoutMs?: number;
  /**
   * Requests made while disconnected wait in a queue of this many and are
   * sent in order once connected (default 100); beyond it they are refused
   * with `queue_full` at once. 0 refuses every request made while disconnected.
   */
  maxQueue?: number;
  /** Reconnect backoff (exponential with full jitter). */
  backoff?: Partial<BackoffOptions>;
  /** Give up after this many reconnect attempts in a row (default: never). */
  maxReconnectAttempts?: number;
  /** Send `refresh` with a new token before the current one expires (default true). */
  refreshBeforeExpiry?: boolean;
  /** Refresh this long before expiry, at most a fifth of the token's remaining life (default 30000 ms). */
  refreshMarginMs?: number;
  /**
   * With nothing received for this long, send a `ping`; no answer within
   * `heartbeatTimeoutMs` drops the connection and reconnects (default 25000
   * ms; 0 turns it off). Browsers cannot see the server's own pings.
   */
  heartbeatIntervalMs?: number;
  /** See `heartbeatIntervalMs` (default 10000 ms). */
  heartbeatTimeoutMs?: number;
  /** Events an async iterator buffers for a slow consumer before it fails with `overflow` (default 1000). */
  maxBufferedEvents?: number;
  /** A source of random numbers in [0, 1) for the backoff's jitter (default `Math.random`). */
  random?: () => number;
  /**
   * Keep requests that have no answer yet (the offline queue) here, so
   * that a request made offline is sent after the app restarts: the
   * browser's `localStorage`, React Native's `AsyncStorage`, or anything
   * with `getItem`/`setItem`/`removeItem`. Default: none (memory only).
   */
  storage?: KeyValueStorage;
  /** The item the queue is kept under (default `"sluice:" + url`); one per client. */
  storageKey?: string;
  /** A request restored from `storage` is dropped once this old (default 86400000 ms, a day). */
  maxQueueAgeMs?: number;
  /**
   * The app's lifecycle: `browserLifecycle()` (the default where there is a
   * `document`), `reactNativeLifecycle(AppState, NetInfo)`, or null for none.
   */
  lifecycle?: Lifecycle | null;
  /** In the background for this long, the client closes its connection until the foreground (default 30000 ms; Infinity: never). */
  backgroundGraceMs?: number;
}

/** The server's `welcome`. */
export interface Welcome {
  connectionId: number;
  subject: string;
  /** When the token expires, Unix seconds. */
  expiresAt: number;
  /** How long the server remembers a request's answer under its key; undefined: it takes no keys. */
  idempotencyWindowSecs: number | undefined;
}

/** A place in a channel's stream (channels whose rule keeps history). */
export interface StreamPosition {
  /** Strictly increasing per channel; not always contiguous (it jumps after a server crash). */
  offset: number;
  /** The channel's epoch, an opaque string: a new one when the history was lost. */
  epoch: string;
}

/** An `event` frame. */
export interface SluiceEvent {
  /** The channel, or undefined for an event sent to this subject. */
  channel: string | undefined;
  data: unknown;
  /** Set on channels that keep history. */
  offset?: number;
  epoch?: string;
}

/** The connection's state. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "suspended" | "closed";

/** A dropped connection that will be retried. */
export interface Disconnect {
  code: number;
  reason: string;
  /** The refused handshake's HTTP status, where the WebSocket implementation tells it. */
  httpStatus: number | undefined;
  /** The wait before the next attempt. */
  delayMs: number;
  /** Reconnect attempts in a row so far (0 before the first). */
  attempt: number;
}

/** The client stopped for good. */
export interface Closed {
  code: number;
  reason: string;
  /** Why it will not reconnect, in words. */
  why: string;
}

/** A resubscription that could not recover what was missed: refetch. */
export interface RecoveryFailed {
  channel: string;
  /** The position the client asked to resume from. */
  since: StreamPosition;
  /** The channel's current position (undefined if the channel keeps no history any more). */
  current: StreamPosition | undefined;
}

/** One subject present on a channel. */
export interface PresenceMember {
  subject: string;
  /** Its connections subscribed to the channel; 0 while a departure is debounced. */
  connections: number;
  /** The tenant's `exposed_claims` of its token. */
  claims: Record<string, unknown>;
}

/** What {@link Subscription.presence} answers. */
export interface Presence {
  members: PresenceMember[];
  /** More subjects than the channel tracks (`max_presence_members`): the list is partial. */
  truncated: boolean;
}

/** A `join` or `leave` on a channel with `presence_events`. */
export interface PresenceChange {
  channel: string;
  subject: string;
  claims: Record<string, unknown>;
}

/** Events of {@link SluiceClient}. */
export type ClientEvents = {
  state: ConnectionState;
  welcome: Welcome;
  event: SluiceEvent;
  disconnected: Disconnect;
  closed: Closed;
  refreshed: { expiresAt: number; dropped: string[] };
  recoveryFailed: RecoveryFailed;
  /** A request restored from `storage` (made before the app restarted) was answered or failed. */
  settled: Settled;
  /** Problems without a caller to tell: `getToken()` threw, a refresh was refused. */
  error: Error;
};

/** How a request restored from `storage` ended. */
export interface Settled {
  key: string;
  type: string;
  channel: string | undefined;
  data: unknown;
  /** The ack's data, when answered. */
  result?: unknown;
  /** Why it failed, otherwise. */
  error?: SluiceError;
}

/** Options of {@link SluiceClient.request}. */
export interface RequestOptions {
  channel?: string;
  /** Default `requestTimeoutMs`. */
  timeoutMs?: number;
  /**
   * The idempotency key (1-64 of `A-Z a-z 0-9 - _ . :`); default a random
   * one. A request with the key of one still pending joins it.
   */
  key?: string;
}

/** Options of {@link SluiceClient.subscribe}. */
export interface SubscribeOptions {
  /**
   * The message that subscribes: the reserved `subscribe` (default) or a
   * route of the tenant that subscribes through its handler (e.g.
   * `chat.join`). It is sent again after every reconnect.
   */
  type?: string;
  /** Its data. */
  data?: unknown;
  /**
   * Resubscribe with the last position as `data.since` (merged into `data`)
   * to recover what was missed. Default: true for the reserved `subscribe`,
   * false for a route; set it for a route whose handler passes `data.since`
   * on to a `subscribe-since` action (its schema must allow `since`).
   */
  recover?: boolean;
  /** The message that unsubscribes (default the reserved `unsubscribe`), e.g. `{ type: "chat.leave" }`. */
  leave?: { type: string; data?: unknown };
}

/** What a (re)subscription's ack said. */
export interface Subscribed {
  /** The ack's data (for a route: the handler's reply). */
  data: unknown;
  /** False the first time, true after a reconnect. */
  resubscribed: boolean;
  /**
   * After a resubscribe with `since`: whether the server replays what was
   * missed (true: every missed event follows; false: `recoveryFailed` fired).
   * For a route, what the server's `subscribed` frame said, if one came
   * before the ack. Undefined when no recovery was asked for (a first
   * subscribe, a channel without history, a route without `recover`):
   * events sent while disconnected may be missing.
   */
  recovered: boolean | undefined;
}

/** Events of a {@link Subscription}. */
export type SubscriptionEvents = {
  event: SluiceEvent;
  subscribed: Subscribed;
  recoveryFailed: RecoveryFailed;
  /** A subject arrived (`presence_events`; this client's own subject included). */
  join: PresenceChange;
  /** A subject left (after the tenant's `presence_debounce_ms`). */
  leave: PresenceChange;
  /** The subscription ended: refused, or dropped by a token refresh. */
  error: SluiceError;
};

interface Pending {
  id: string;
  type: string;
  channel: string | undefined;
  data: unknown;
  /** App requests only. */
  key: string | undefined;
  sent: boolean;
  /** Made (Unix ms). */
  at: number;
  /** Sent with its key: until when a resend is safe (Unix ms). */
  until?: number;
  /** Sent without a key (the server takes none): never sent again. */
  bare?: boolean;
  timer: unknown;
  resolve(data: unknown): void;
  reject(error: SluiceError): void;
}

/** A resend must reach the server this long before its window ends. */
const RESEND_MARGIN_MS = 5000;
const KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** A random key: 22 characters of base64url, 132 bits. */
function randomKey(random: () => number): string {
  const bytes = new Uint8Array(22);
  const c = platform.crypto;
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  let key = "";
  for (const b of bytes) key += KEY_ALPHABET[b & 63];
  return key;
}

/** A string, else undefined. */
const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
/** A number, else undefined. */
const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** A channel the client keeps subscribed across reconnects. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** Resolves with the first ack's data; rejects if the subscription is refused. */
  readonly ready: Promise<unknown>;
  /** @internal */ state: "pending" | "active" | "gone" = "pending";
  /** @internal */ everActive = false;
  /** @internal */ position: StreamPosition | undefined;
  /** @internal The `since` sent with the current (re)subscription. */ asked: StreamPosition | undefined;
  /** @internal What the server said of that recovery. */ recovered: boolean | undefined;
  /** @internal */ streams = new Set<EventStream<SluiceEvent>>();
  /** @internal */ settle!: { resolve(v: unknown): void; reject(e: SluiceError): void; done: boolean };

  /** @internal */
  constructor(
    private readonly client: SluiceClient,
    readonly channel: string,
    /** @internal */ readonly options: SubscribeOptions,
  ) {
    super();
    this.ready = new Promise((resolve, reject) => {
      this.settle = { resolve, reject, done: false };
    });
    // An unawaited refusal must not become an unhandled rejection.
    this.ready.catch(() => undefined);
  }

  /** Whether the server has acknowledged it on the current connection. */
  get active(): boolean {
    return this.state === "active";
  }

  /** The last position delivered (servers with channel history only). */
  get lastPosition(): StreamPosition | undefined {
    return this.position;
  }

  /** This channel's events as an async iterator (ends on unsubscribe). */
  events(): AsyncIterableIterator<SluiceEvent> {
    return this.client.stream(this.streams);
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<SluiceEvent> {
    return this.events();
  }

  /**
   * Who is subscribed to the channel: a `presence` request (a channel
   * whose rule sets `presence = true`; otherwise it rejects with `forbidden`).
   */
  presence(): Promise<Presence> {
    return this.client.request<Presence>("presence", undefined, { channel: this.channel });
  }

  /** Stop: no more events, no resubscription; tells the server if connected. */
  async unsubscribe(): Promise<void> {
    if (this.state === "gone") return;
    this.client.forget(this, undefined);
    if (this.client.state === "open") {
      const leave = this.options.leave ?? { type: "unsubscribe" };
      await this.client.request(leave.type, leave.data, { channel: this.channel });
    }
  }

  /** @internal */
  fire<K extends keyof SubscriptionEvents>(name: K, value: SubscriptionEvents[K]): void {
    this.emit(name, value);
  }
}

/**
 * A Sluice connection that stays up: reconnects with backoff, refreshes
 * its token, resubscribes, and answers requests with promises.
 */
export class SluiceClient extends Emitter<ClientEvents> {
  private readonly o: Required<Omit<ClientOptions, "WebSocket" | "webSocketOptions" | "backoff" | "tokenIn" | "storage" | "lifecycle">> & {
    backoff: BackoffOptions;
    tokenIn: "header" | "subprotocol";
  };
  private readonly storage: KeyValueStorage | undefined;
  private readonly lifecycle: Lifecycle | undefined;
  private unlisten: (() => void) | undefined;
  /** The restored queue, once loaded. */
  private loaded: Promise<void> | undefined;
  private saving = false;
  /** In the background: the timer that suspends, or true once suspended. */
  private away: unknown;
  private readonly Ws: WebSocketConstructor;
  private readonly wsOptions: Record<string, unknown> | undefined;
  private ws: Socket | undefined;
  private current: ConnectionState = "idle";
  private info: Welcome | undefined;
  private nextId = 0;
  private attempt = 0;
  private everOpen = false;
  private last401 = false;
  private holdUntil = 0;
  private lastReceived = 0;
  private timers: { reconnect?: unknown; refresh?: unknown; heartbeat?: unknown; hold?: unknown; away?: unknown } = {};
  private pending = new Map<string, Pending>();
  private queue: string[] = [];
  /**
   * Ids sent and not answered yet, in sending order. The server handles a
   * connection's messages one at a time and answers each, so answers come
   * in this order: an `error` without an id (`too_deep`, `bad_json`: the
   * server could not read the id) answers the oldest.
   */
  private inflight: string[] = [];
  private subs = new Map<string, Subscription>();
  private streams = new Set<EventStream<SluiceEvent>>();
  private waiters: Array<{ resolve(w: Welcome): void; reject(e: unknown): void }> = [];
  private onLifecycle = (event: LifecycleEvent): void => {
    if (this.current === "closed" || this.current === "idle") return;
    if (event === "background") {
      if (this.timers.away === undefined && Number.isFinite(this.o.backgroundGraceMs)) {
        this.timers.away = later(() => this.suspend(), this.o.backgroundGraceMs);
      }
      return;
    }
    if (event === "offline") return;
    if (event === "foreground") {
      cancel(this.timers.away);
      this.timers.away = undefined;
      if (this.current === "suspended") {
        this.attempt = 0;
        void this.open();
        return;
      }
      // Back from a sleep the socket may not have survived: ask now.
      if (this.current === "open") this.scheduleHeartbeat(0);
    }
    // Foreground or online while waiting out a backoff delay: try now.
    if (this.timers.reconnect !== undefined) {
      cancel(this.timers.reconnect);
      void this.open();
    }
  };

  constructor(options: ClientOptions) {
    super();
    checkUrl(options.url);
    const Ws = options.WebSocket ?? platform.WebSocket;
    if (!Ws) throw new TypeError("no WebSocket implementation: pass options.WebSocket (e.g. the ws package in Node)");
    this.Ws = Ws;
    const browser = platform.location !== undefined && platform.navigator?.product !== "ReactNative";
    this.o = {
      url: options.url,
      getToken: options.getToken,
      tokenIn: options.tokenIn ?? (browser ? "subprotocol" : "header"),
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      maxQueue: options.maxQueue ?? 100,
      backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
      maxReconnectAttempts: options.maxReconnectAttempts ?? Infinity,
      refreshBeforeExpiry: options.refreshBeforeExpiry ?? true,
      refreshMarginMs: options.refreshMarginMs ?? 30_000,
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 25_000,
      heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 10_000,
      maxBufferedEvents: options.maxBufferedEvents ?? 1000,
      random: options.random ?? Math.random,
      storageKey: options.storageKey ?? `sluice:${options.url}`,
      maxQueueAgeMs: options.maxQueueAgeMs ?? 86_400_000,
      backgroundGraceMs: options.backgroundGraceMs ?? 30_000,
    };
    this.wsOptions = options.webSocketOptions;
    this.storage = options.storage;
    this.lifecycle =
      options.lifecycle === null ? undefined : (options.lifecycle ?? (platform.addEventListener ? browserLifecycle() : undefined));
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The current connection's `welcome` (undefined while not connected). */
  get welcome(): Welcome | undefined {
    return this.info;
  }

  /**
   * Start connecting (and keep reconnecting). Resolves with the first
   * `welcome`; rejects if the client stops for good before one.
   */
  connect(): Promise<Welcome> {
    if (this.current === "closed") return Promise.reject(new SluiceError(ClientErrorCode.closed, "the client is closed"));
    if (this.current === "open" && this.info) return Promise.resolve(this.info);
    const p = new Promise<Welcome>((resolve, reject) => this.waiters.push({ resolve, reject }));
    // Callers that do not wait for it must not get an unhandled rejection.
    p.catch(() => undefined);
    if (this.current === "idle") {
      this.unlisten = this.lifecycle?.subscribe(this.onLifecycle);
      this.loaded = this.restore();
      void this.open();
    } else if (this.current === "suspended") {
      void this.open();
    }
    return p;
  }

  /** Close for good: pending and queued requests fail with `closed`. */
  close(): void {
    this.stop({ code: 1000, reason: "", why: "closed by the app" });
  }

  /**
   * Send a message of `type` (a route of the tenant) and resolve with the
   * ack's data; reject with a {@link SluiceError}.
   */
  request<T = unknown>(type: string, data?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.call<T>(type, data, options, false);
  }

  /**
   * A request; `internal` ones (subscribe, refresh) go out at once while
   * connected, ahead of the queue and the rate-limit hold, and are never
   * refused for a full queue.
   */
  private call<T>(type: string, data: unknown, options: RequestOptions, internal: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => this.send(type, data, options, internal, resolve as (d: unknown) => void, reject));
  }

  /** Send (or queue) a message; exactly one of `resolve` and `reject` is called, synchronously on its answer. */
  private send(
    type: string,
    data: unknown,
    options: RequestOptions,
    internal: boolean,
    resolve: (data: unknown) => void,
    reject: (error: SluiceError) => void,
  ): void {
    if (this.current === "closed") {
      reject(new SluiceError(ClientErrorCode.closed, "the client is closed"));
      return;
    }
    // Reserved types are idempotent already; the server takes keys on routes only.
    const reserved = /^(subscribe|unsubscribe|presence|ping|refresh)$|^sluice\./.test(type);
    const key = internal || reserved ? undefined : (options.key ?? randomKey(this.o.random));
    if (key !== undefined) {
      const same = [...this.pending.values()].find((p) => p.key === key);
      if (same) {
        // The same request again (a retry, or a restored one): join it.
        if (same.type !== type || same.channel !== options.channel || JSON.stringify(same.data) !== JSON.stringify(data)) {
          reject(new SluiceError("key_reused", "a pending request has this key with another type, channel or data", undefined, key));
          return;
        }
        const [res, rej] = [same.resolve, same.reject];
        same.resolve = (d) => (res(d), resolve(d));
        same.reject = (e) => (rej(e), reject(e));
        return;
      }
    }
    const id = this.id();
    const entry: Pending = { id, type, channel: options.channel, data, key, sent: false, at: Date.now(), timer: undefined, resolve, reject };
    const timeoutMs = options.timeoutMs ?? this.o.requestTimeoutMs;
    entry.timer = later(() => this.expire(id, `no answer to ${type} within ${timeoutMs} ms`), timeoutMs);
    this.pending.set(id, entry);
    if (internal ? this.current === "open" && this.ws !== undefined : this.canSend() && this.queue.length === 0) {
      this.transmit(entry);
    } else if (internal || this.queue.length < this.o.maxQueue) {
      this.queue.push(id);
      this.armHold();
    } else {
      this.settle(id, new SluiceError(ClientErrorCode.queueFull, this.o.maxQueue === 0 ? "not connected" : `not connected and ${this.o.maxQueue} requests already wait`));
    }
    if (key !== undefined) this.save();
  }

  /** A request's time is up. */
  private expire(id: string, why: string): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.queue = this.queue.filter((q) => q !== id);
    const hint = p.until !== undefined ? `; it may have been applied: request again with its key (${p.key}) to learn its answer` : "";
    this.settle(id, new SluiceError(ClientErrorCode.timeout, why + hint, undefined, p.key));
  }

  /**
   * Subscribe to `channel` now and after every reconnect (resuming from the
   * last position where the server keeps channel history).
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this.current === "closed") this.forget(sub, new SluiceError(ClientErrorCode.closed, "the client is closed"));
    else if (this.current === "open") this.sendSubscribe(sub);
    return sub;
  }

  /** Every event (all channels, and those sent to this subject) as an async iterator. */
  events(): AsyncIterableIterator<SluiceEvent> {
    return this.stream(this.streams);
  }

  /** @internal */
  stream(set: Set<EventStream<SluiceEvent>>): EventStream<SluiceEvent> {
    const s = new EventStream<SluiceEvent>(this.o.maxBufferedEvents, (done) => set.delete(done));
    if (this.current === "closed") s.end();
    else set.add(s);
    return s;
  }

  /** @internal Drop a subscription (unsubscribed, refused or dropped). */
  forget(sub: Subscription, error: SluiceError | undefined): void {
    if (sub.state === "gone") return;
    sub.state = "gone";
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    for (const s of [...sub.streams]) s.end(error);
    if (!sub.settle.done) {
      sub.settle.done = true;
      sub.settle.reject(error ?? new SluiceError(ClientErrorCode.closed, "unsubscribed"));
    }
    if (error) sub.fire("error", error);
  }

  // --- connection ---------------------------------------------------------

  /** Report what was thrown as an `error` event. */
  private fail(e: unknown): void {
    this.emit("error", e instanceof Error ? e : new Error(String(e)));
  }

  private id(): string {
    this.nextId += 1;
    return String(this.nextId);
  }

  private canSend(): boolean {
    return this.current === "open" && this.ws !== undefined && Date.now() >= this.holdUntil;
  }

  private setState(state: ConnectionState): void {
    if (this.current === state) return;
    this.current = state;
    this.emit("state", state);
  }

  private async open(): Promise<void> {
    this.timers.reconnect = undefined;
    this.away = undefined;
    if ((this.current as ConnectionState) === "closed" || this.ws) return;
    this.setState(this.attempt === 0 && this.info === undefined && !this.everOpen ? "connecting" : "reconnecting");
    await this.loaded;
    let token: string;
    try {
      token = await this.o.getToken();
    } catch (e) {
      if (this.current === "closed") return;
      this.fail(e);
      this.retry(1006, "getToken() failed", undefined, { retry: true, freshToken: true, immediate: false });
      return;
    }
    if (this.current === "closed") return;
    const header = this.o.tokenIn === "header";
    const protocols = header ? [SUBPROTOCOL] : [SUBPROTOCOL, `bearer.${token}`];
    let options = this.wsOptions;
    if (header) {
      const headers = { ...(options?.headers as Record<string, string> | undefined), Authorization: `Bearer ${token}` };
      options = { ...options, headers };
    }
    let ws: Socket;
    try {
      ws = (options ? new this.Ws(this.o.url, protocols, options) : new this.Ws(this.o.url, protocols)) as Socket;
    } catch (e) {
      // A malformed URL: retrying cannot help.
      this.stop({ code: 1006, reason: "", why: `cannot open ${this.o.url}: ${(e as Error).message}` });
      return;
    }
    this.ws = ws;
    let httpStatus: number | undefined;
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.onFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    ws.onerror = (ev) => {
      // Node's ws reports a refused handshake as "Unexpected server response: 401".
      const e = ev as { message?: unknown; error?: { message?: unknown } };
      const m = /Unexpected server response: (\d{3})/.exec(String(e?.message ?? e?.error?.message ?? ""));
      if (m) httpStatus = Number(m[1]);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.lost(ev.code, ev.reason ?? "", httpStatus);
    };
  }
  /** Drop the current socket without waiting for a closing handshake. */
  private drop(code: number, reason: string): void {
    if (!this.ws) return;
    release(this.ws);
    this.lost(code, reason, undefined);
  }

  /** The connection ended: clean up, then reconnect or stop. */
  private lost(code: number, reason: string, httpStatus: number | undefined): void {
    const welcomed = this.current === "open";
    this.ws = undefined;
    this.info = undefined;
    this.inflight = [];
    for (const key of ["refresh", "heartbeat", "hold"] as const) {
      cancel(this.timers[key]);
      this.timers[key] = undefined;
    }
    // Sent with a key: resent first after the next welcome, in sending
    // order, while the server still remembers the key. The rest may or may
    // not have been applied: they fail.
    const resend: string[] = [];
    for (const [id, p] of [...this.pending]) {
      if (!p.sent) continue;
      p.sent = false;
      if (this.resendable(p)) resend.push(id);
      else this.lose(id);
    }
    this.queue = [...resend, ...this.queue];
    for (const sub of this.subs.values()) sub.state = "pending";
    if (this.current === "closed") return;
    if (this.away === true) {
      this.setState("suspended");
      return;
    }
    const decision = closeDecision(code, reason, welcomed ? undefined : httpStatus, this.last401);
    this.last401 = !welcomed && httpStatus === 401;
    this.retry(code, reason, welcomed ? undefined : httpStatus, decision);
  }

  private retry(code: number, reason: string, httpStatus: number | undefined, decision: ReturnType<typeof closeDecision>): void {
    if (!decision.retry) {
      this.stop({ code, reason, why: decision.why });
      return;
    }
    if (this.attempt >= this.o.maxReconnectAttempts) {
      this.stop({ code, reason, why: `gave up after ${this.attempt} reconnect attempts` });
      return;
    }
    const delayMs = decision.immediate ? 0 : backoffDelay(this.attempt, this.o.backoff, this.o.random);
    const attempt = this.attempt;
    this.attempt += 1;
    this.setState("reconnecting");
    this.emit("disconnected", { code, reason, httpStatus, delayMs, attempt });
    this.timers.reconnect = later(() => void this.open(), delayMs);
  }

  private stop(closed: Closed): void {
    if (this.current === "closed") return;
    this.setState("closed");
    this.unlisten?.();
    for (const t of Object.values(this.timers)) cancel(t);
    this.timers = {};
    const ws = this.ws;
    this.ws = undefined;
    this.info = undefined;
    if (ws) release(ws);
    const error = new SluiceError(ClientErrorCode.closed, `the client stopped: ${closed.why}`);
    for (const id of [...this.pending.keys()]) this.settle(id, error);
    this.queue = [];
    // Closed by the app: subscriptions and iterators end quietly.
    const quiet = closed.why === "closed by the app";
    for (const sub of [...this.subs.values()]) this.forget(sub, quiet ? undefined : error);
    for (const s of [...this.streams]) s.end();
    for (const w of this.waiters.splice(0)) w.reject(error);
    this.emit("closed", closed);
  }

  // --- frames -------------------------------------------------------------

  private transmit(entry: Pending): void {
    const window = this.info?.idempotencyWindowSecs;
    const keyed = entry.key !== undefined && window !== undefined;
    // Sent with its key before: only with it again, and only in time.
    if (entry.until !== undefined && !(keyed && this.resendable(entry))) {
      this.lose(entry.id);
      return;
    }
    if (keyed && entry.until === undefined) entry.until = Date.now() + (window as number) * 1000 - RESEND_MARGIN_MS;
    if (!keyed) entry.bare = true;
    entry.sent = true;
    this.inflight.push(entry.id);
    const { id, type, channel, data } = entry;
    this.ws?.send(JSON.stringify({ type, id, key: keyed ? entry.key : undefined, channel, data }));
    if (entry.key !== undefined) this.save();
  }

  private resendable(p: Pending): boolean {
    return p.until !== undefined && Date.now() < p.until;
  }

  private lose(id: string): void {
    this.settle(id, new SluiceError(ClientErrorCode.connectionLost, "the connection dropped before the answer; the request may or may not have been applied"));
  }

  /** The id an answer is for: its own, or for an id-less error the oldest in flight. */
  private answered(id: string | undefined): string | undefined {
    if (id === undefined) return this.inflight.shift();
    const i = this.inflight.indexOf(id);
    if (i >= 0) this.inflight.splice(i, 1);
    return id;
  }

  /** Resolve or reject pending request `id`. */
  private settle(id: string, result: SluiceError | { data: unknown }): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    cancel(p.timer);
    if (result instanceof SluiceError) p.reject(result);
    else p.resolve(result.data);
    if (p.key !== undefined) this.save();
  }

  // --- the offline queue in storage ----------------------------------------

  /** Write the app's pending requests to storage (once per turn of the event loop). */
  private save(): void {
    const storage = this.storage;
    if (!storage || this.saving || this.loaded === undefined) return;
    this.saving = true;
    void this.loaded
      .then(() => {
        this.saving = false;
        const items = [...this.pending.values()]
          .filter((p) => p.key !== undefined)
          .map(({ key, type, channel, data, at, until, bare }) => ({ key, type, channel, data, at, until, bare }));
        return items.length > 0 ? storage.setItem(this.o.storageKey, JSON.stringify(items)) : storage.removeItem(this.o.storageKey);
      })
      .catch((e: unknown) => this.fail(e));
  }

  /** Put the requests a previous run left in storage at the head of the queue. */
  private async restore(): Promise<void> {
    const storage = this.storage;
    if (!storage) return;
    let items: unknown;
    try {
      items = JSON.parse((await storage.getItem(this.o.storageKey)) ?? "[]");
    } catch (e) {
      this.fail(e);
      return;
    }
    if (!Array.isArray(items)) return;
    const restored: string[] = [];
    for (const item of items) {
      if (!isObject(item) || typeof item.key !== "string" || typeof item.type !== "string" || typeof item.at !== "number") continue;
      if ([...this.pending.values()].some((p) => p.key === item.key)) continue;
      const { key, type, data } = item;
      const channel = str(item.channel);
      const id = this.id();
      const report = (end: { result?: unknown; error?: SluiceError }): void => this.emit("settled", { key, type, channel, data, ...end });
      const left = item.at + this.o.maxQueueAgeMs - Date.now();
      if (item.bare || left <= 0) {
        // Sent without a key before the app stopped: it may have been applied.
        report({
          error: item.bare
            ? new SluiceError(ClientErrorCode.connectionLost, "sent without a key before the app stopped; it may or may not have been applied", undefined, key)
            : new SluiceError(ClientErrorCode.timeout, `not sent within ${this.o.maxQueueAgeMs} ms`, undefined, key),
        });
        continue;
      }
      const entry: Pending = {
        id,
        type,
        channel,
        data,
        key,
        sent: false,
        at: item.at,
        until: num(item.until),
        timer: undefined,
        resolve: (result) => report({ result }),
        reject: (error) => report({ error }),
      };
      this.pending.set(id, entry);
      entry.timer = later(() => this.expire(id, `not sent within ${this.o.maxQueueAgeMs} ms`), left);
      restored.push(id);
    }
    this.queue = [...restored, ...this.queue];
  }

  // --- the app's lifecycle --------------------------------------------------

  /** In the background past the grace period: close until the foreground. */
  private suspend(): void {
    this.timers.away = undefined;
    this.away = true;
    cancel(this.timers.reconnect);
    this.timers.reconnect = undefined;
    if (this.ws) this.drop(1000, "in the background");
    else this.setState("suspended");
  }

  /** Send queued requests, in order, as far as the rate-limit hold allows. */
  private flush(): void {
    while (this.queue.length > 0 && this.canSend()) {
      const id = this.queue.shift() as string;
      const p = this.pending.get(id);
      if (p) this.transmit(p);
    }
    this.armHold();
  }

  /** After a `rate_limited`, wait `retry_after_ms` before sending more. */
  private armHold(): void {
    if (this.timers.hold !== undefined || this.queue.length === 0 || this.current !== "open") return;
    const wait = this.holdUntil - Date.now();
    if (wait <= 0) return;
    this.timers.hold = later(() => {
      this.timers.hold = undefined;
      this.flush();
    }, wait);
  }

  private onFrame(text: string): void {
    this.lastReceived = Date.now();
    let msg: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(text);
      if (!isObject(parsed)) return;
      msg = parsed;
    } catch {
      return;
    }
    let id = str(msg.id);
    // The subscription a frame about a channel is for.
    const sub = this.subs.get(msg.channel as string);
    switch (msg.type) {
      case "welcome": {
        const d = isObject(msg.data) ? msg.data : {};
        const window = isObject(d.idempotency) ? Number(d.idempotency.window_secs) : NaN;
        this.info = {
          connectionId: Number(d.connection_id),
          subject: String(d.subject),
          expiresAt: Number(d.expires_at),
          idempotencyWindowSecs: window > 0 ? window : undefined,
        };
        this.attempt = 0;
        this.last401 = false;
        this.everOpen = true;
        this.setState("open");
        this.emit("welcome", this.info);
        for (const w of this.waiters.splice(0)) w.resolve(this.info);
        this.scheduleRefresh();
        this.scheduleHeartbeat(this.o.heartbeatIntervalMs);
        for (const sub of this.subs.values()) this.sendSubscribe(sub);
        this.flush();
        return;
      }
      case "ack":
        if (id !== undefined) this.settle(this.answered(id) as string, { data: msg.data ?? null });
        return;
      case "pong":
        this.answered(id);
        return;
      case "error": {
        id = this.answered(id);
        const retryAfterMs = num(msg.retry_after_ms);
        if (msg.code === "rate_limited" && retryAfterMs !== undefined) {
          this.holdUntil = Math.max(this.holdUntil, Date.now() + retryAfterMs);
        }
        const error = new SluiceError(String(msg.code), String(msg.message ?? ""), retryAfterMs, id === undefined ? undefined : this.pending.get(id)?.key);
        if (id !== undefined && this.pending.has(id)) this.settle(id, error);
        else this.emit("error", error);
        return;
      }
      case "event":
        this.onEvent(msg, sub);
        return;
      case "subscribed": {
        // A handler subscribed this connection (e.g. `chat.join`): the
        // position part of a subscribe ack, before any replayed event.
        if (sub && sub.state !== "gone") this.position(sub, msg.data);
        return;
      }
      case "unsubscribed": {
        // The server ended a subscription (a reload's channel rules no
        // longer allow it): gone for good, like a refused subscribe.
        const reason = str(msg.reason) ?? "the server ended this subscription";
        if (sub) this.forget(sub, new SluiceError("forbidden", reason));
        return;
      }
      case "join":
      case "leave": {
        const d = isObject(msg.data) ? msg.data : {};
        if (sub && sub.state !== "gone") {
          sub.fire(msg.type, { channel: sub.channel, subject: String(d.subject), claims: isObject(d.claims) ? d.claims : {} });
        }
        return;
      }
      default:
        return;
    }
  }

  private onEvent(msg: Record<string, unknown>, sub: Subscription | undefined): void {
    const event: SluiceEvent = { channel: str(msg.channel), data: msg.data };
    if (typeof msg.offset === "number" && typeof msg.epoch === "string") {
      event.offset = msg.offset;
      event.epoch = msg.epoch;
      if (sub) {
        const p = sub.position;
        // Already delivered (a replay overlapping what arrived before the drop).
        if (p && p.epoch === msg.epoch && msg.offset <= p.offset) return;
        sub.position = { offset: msg.offset, epoch: msg.epoch };
      }
    }
    this.emit("event", event);
    for (const s of this.streams) s.push(event);
    if (sub && sub.state !== "gone") {
      sub.fire("event", event);
      for (const s of sub.streams) s.push(event);
    }
  }

  // --- subscriptions ------------------------------------------------------

  private sendSubscribe(sub: Subscription): void {
    const reserved = sub.options.type === undefined || sub.options.type === "subscribe";
    const since = (sub.options.recover ?? reserved) ? sub.position : undefined;
    sub.asked = since;
    sub.recovered = undefined;
    let data = sub.options.data;
    if (since) data = { ...(isObject(data) ? data : {}), since };
    const ws = this.ws;
    this.send(
      sub.options.type ?? "subscribe",
      data,
      { channel: sub.channel },
      true,
      (ack) => this.subscribed(sub, ack, reserved),
      (error: SluiceError) => {
        if (sub.state === "gone" || this.ws !== ws) return; // Resent on the next connection.
        if (error.code === ClientErrorCode.timeout) {
          sub.fire("error", error);
        } else if (error.retryAfterMs !== undefined) {
          later(() => {
            if (this.ws === ws && sub.state === "pending" && this.subs.get(sub.channel) === sub) this.sendSubscribe(sub);
          }, error.retryAfterMs);
        } else if (error.code !== ClientErrorCode.closed && error.code !== ClientErrorCode.connectionLost) {
          this.forget(sub, error);
        }
      },
    );
  }

  private subscribed(sub: Subscription, data: unknown, reserved: boolean): void {
    if (sub.state === "gone") return;
    // A route's ack is its handler's reply; its position came in a `subscribed` frame.
    if (reserved) this.position(sub, data);
    const resubscribed = sub.everActive;
    sub.everActive = true;
    sub.state = "active";
    if (!sub.settle.done) {
      sub.settle.done = true;
      sub.settle.resolve(data);
    }
    sub.fire("subscribed", { data, resubscribed, recovered: sub.recovered });
  }

  /**
   * The position part of a subscribe ack or a `subscribed` frame:
   * `{ offset, epoch }` where the channel keeps history, and `recovered`
   * when a recovery was asked for.
   */
  private position(sub: Subscription, data: unknown): void {
    if (!isObject(data)) return;
    const current =
      typeof data.offset === "number" && typeof data.epoch === "string" ? { offset: data.offset, epoch: data.epoch } : undefined;
    if (typeof data.recovered !== "boolean") {
      if (current && !sub.position) sub.position = current;
      return;
    }
    sub.recovered = data.recovered;
    // Recovered: the missed events follow and advance the position.
    if (data.recovered) return;
    const since = sub.asked ?? sub.position;
    sub.position = current;
    if (since) {
      const info: RecoveryFailed = { channel: sub.channel, since, current };
      sub.fire("recoveryFailed", info);
      this.emit("recoveryFailed", info);
    }
  }

  // --- token refresh and heartbeat ---------------------------------------

  private scheduleRefresh(previousExpiry?: number): void {
    cancel(this.timers.refresh);
    this.timers.refresh = undefined;
    const info = this.info;
    if (!this.o.refreshBeforeExpiry || !info || !Number.isFinite(info.expiresAt)) return;
    // A refresh that did not extend the token: let it expire, then
    // reconnect with a fresh one, rather than refresh in a loop.
    if (previousExpiry !== undefined && info.expiresAt <= previousExpiry) return;
    const remaining = info.expiresAt * 1000 - Date.now();
    const delay = Math.max(1000, remaining - Math.min(this.o.refreshMarginMs, remaining / 5));
    // Timers take at most 2^31-1 ms (24.8 days); a longer delay would fire at once.
    this.timers.refresh = later(() => void this.refresh(), Math.min(delay, 2 ** 31 - 1));
  }

  private async refresh(): Promise<void> {
    this.timers.refresh = undefined;
    const ws = this.ws;
    const info = this.info;
    if (!ws || !info) return;
    let token: string;
    try {
      token = await this.o.getToken();
    } catch (e) {
      this.fail(e);
      this.scheduleRefresh();
      return;
    }
    if (this.ws !== ws) return;
    const ack = (await this.call("refresh", { token }, {}, true).catch((e: SluiceError) => e)) as unknown;
    if (this.ws !== ws || !this.info) return;
    if (ack instanceof SluiceError) {
      this.emit("error", ack);
      this.scheduleRefresh();
      return;
    }
    const d = isObject(ack) ? ack : {};
    const expiresAt = Number(d.expires_at);
    const dropped = Array.isArray(d.dropped) ? d.dropped.map(String) : [];
    this.info = { ...this.info, expiresAt };
    for (const channel of dropped) {
      const sub = this.subs.get(channel);
      if (sub) this.forget(sub, new SluiceError("forbidden", "the refreshed token does not allow this channel"));
    }
    this.emit("refreshed", { expiresAt, dropped });
    this.scheduleRefresh(info.expiresAt);
  }

  /** Check the connection is alive after `first` ms (0: ping at once), then every `heartbeatIntervalMs` of silence. */
  private scheduleHeartbeat(first: number): void {
    cancel(this.timers.heartbeat);
    const interval = this.o.heartbeatIntervalMs;
    if (interval <= 0) return;
    if (first > 0) this.lastReceived = Date.now();
    const tick = (force?: boolean): void => {
      const idle = Date.now() - this.lastReceived;
      if (idle < interval && !force) {
        this.timers.heartbeat = later(tick, interval - idle);
        return;
      }
      const sentAt = Date.now();
      this.inflight.push("heartbeat");
      this.ws?.send(JSON.stringify({ type: "ping", id: "heartbeat" }));
      this.timers.heartbeat = later(() => {
        if (this.lastReceived < sentAt) this.drop(1006, "heartbeat timeout");
        else tick();
      }, this.o.heartbeatTimeoutMs);
    };
    this.timers.heartbeat = later(() => tick(first === 0), first);
  }
}

/** An error handler for a socket the client has let go of. */
function ignore(): void {}

/** Let a socket go without waiting for its closing handshake: its
 * handlers are detached first. A socket closed while still connecting
 * reports an error later (Node's `ws` throws it when nobody listens): it
 * is of no interest any more. */
function release(ws: Socket): void {
  ws.onmessage = ws.onclose = null;
  ws.onerror = ignore;
  try {
    ws.close(1000);
  } catch {
    // Already closed.
  }
}
