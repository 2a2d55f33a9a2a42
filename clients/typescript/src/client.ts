import { ClientErrorCode, SluiceError } from "./errors.js";
import { backoffDelay, checkUrl, closeDecision, DEFAULT_BACKOFF, type BackoffOptions } from "./policy.js";
import { Emitter, EventStream } from "./stream.js";
import { browserLifecycle, type Lifecycle, type LifecycleEvent } from "./lifecycle.js";
import type { KeyValueStorage } from "./storage.js";

/**
 * Refusals of a subscribe that are about now, not about the subscription
 * (overload, a history node unreachable, a handler that ran out of time
 * under load): it is asked again with the reconnect backoff instead of
 * ending with an error.
 */
const TEMPORARY_SUBSCRIBE_ERRORS: readonly string[] = ["unavailable", "handler_timeout"];

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
  /** @internal */ _state: "pending" | "active" | "gone" = "pending";
  /** @internal */ _everActive = false;
  /** @internal Subscribes refused for now in a row. */ _tries = 0;
  /** @internal */ _position: StreamPosition | undefined;
  /** @internal The `since` sent with the current (re)subscription. */ _asked: StreamPosition | undefined;
  /** @internal What the server said of that recovery. */ _recovered: boolean | undefined;
  /** @internal */ _streams = new Set<EventStream<SluiceEvent>>();
  /** @internal */ _settle!: { resolve(v: unknown): void; reject(e: SluiceError): void; done: boolean };

  /** @internal */
  constructor(
    private readonly _client: SluiceClient,
    readonly channel: string,
    /** @internal */ readonly _options: SubscribeOptions,
  ) {
    super();
    this.ready = new Promise((resolve, reject) => {
      this._settle = { resolve, reject, done: false };
    });
    // An unawaited refusal must not become an unhandled rejection.
    this.ready.catch(() => undefined);
  }

  /** Whether the server has acknowledged it on the current connection. */
  get active(): boolean {
    return this._state === "active";
  }

  /** The last position delivered (servers with channel history only). */
  get lastPosition(): StreamPosition | undefined {
    return this._position;
  }

  /** This channel's events as an async iterator (ends on unsubscribe). */
  events(): AsyncIterableIterator<SluiceEvent> {
    return this._client._stream(this._streams);
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<SluiceEvent> {
    return this.events();
  }

  /**
   * Who is subscribed to the channel: a `presence` request (a channel
   * whose rule sets `presence = true`; otherwise it rejects with `forbidden`).
   */
  presence(): Promise<Presence> {
    return this._client.request<Presence>("presence", undefined, { channel: this.channel });
  }

  /** Stop: no more events, no resubscription; tells the server if connected. */
  async unsubscribe(): Promise<void> {
    if (this._state === "gone") return;
    this._client._forget(this, undefined);
    if (this._client.state === "open") {
      const leave = this._options.leave ?? { type: "unsubscribe" };
      await this._client.request(leave.type, leave.data, { channel: this.channel });
    }
  }

  /** @internal */
  _fire<K extends keyof SubscriptionEvents>(name: K, value: SubscriptionEvents[K]): void {
    this.emit(name, value);
  }
}

/**
 * A Sluice connection that stays up: reconnects with backoff, refreshes
 * its token, resubscribes, and answers requests with promises.
 */
export class SluiceClient extends Emitter<ClientEvents> {
  private readonly _o: Required<Omit<ClientOptions, "WebSocket" | "webSocketOptions" | "backoff" | "tokenIn" | "storage" | "lifecycle">> & {
    backoff: BackoffOptions;
    tokenIn: "header" | "subprotocol";
  };
  private readonly _storage: KeyValueStorage | undefined;
  private readonly _lifecycle: Lifecycle | undefined;
  private _unlisten: (() => void) | undefined;
  /** The restored queue, once loaded. */
  private _loaded: Promise<void> | undefined;
  private _saving = false;
  /** In the background: the timer that suspends, or true once suspended. */
  private _away: unknown;
  private readonly _Ws: WebSocketConstructor;
  private readonly _wsOptions: Record<string, unknown> | undefined;
  private _ws: Socket | undefined;
  private _current: ConnectionState = "idle";
  private _info: Welcome | undefined;
  private _nextId = 0;
  private _attempt = 0;
  private _everOpen = false;
  private _last401 = false;
  private _holdUntil = 0;
  private _lastReceived = 0;
  private _timers: { reconnect?: unknown; refresh?: unknown; heartbeat?: unknown; hold?: unknown; away?: unknown } = {};
  private _pending = new Map<string, Pending>();
  private _queue: string[] = [];
  /**
   * Ids sent and not answered yet, in sending order. The server handles a
   * connection's messages one at a time and answers each, so answers come
   * in this order: an `error` without an id (`too_deep`, `bad_json`: the
   * server could not read the id) answers the oldest.
   */
  private _inflight: string[] = [];
  private _subs = new Map<string, Subscription>();
  private _streams = new Set<EventStream<SluiceEvent>>();
  private _waiters: Array<{ resolve(w: Welcome): void; reject(e: unknown): void }> = [];
  private _onLifecycle = (event: LifecycleEvent): void => {
    if (this._current === "closed" || this._current === "idle") return;
    if (event === "background") {
      if (this._timers.away === undefined && Number.isFinite(this._o.backgroundGraceMs)) {
        this._timers.away = later(() => this._suspend(), this._o.backgroundGraceMs);
      }
      return;
    }
    if (event === "offline") return;
    if (event === "foreground") {
      cancel(this._timers.away);
      this._timers.away = undefined;
      if (this._current === "suspended") {
        this._attempt = 0;
        void this._open();
        return;
      }
      // Back from a sleep the socket may not have survived: ask now.
      if (this._current === "open") this._scheduleHeartbeat(0);
    }
    // Foreground or online while waiting out a backoff delay: try now.
    if (this._timers.reconnect !== undefined) {
      cancel(this._timers.reconnect);
      void this._open();
    }
  };

  constructor(options: ClientOptions) {
    super();
    checkUrl(options.url);
    const Ws = options.WebSocket ?? platform.WebSocket;
    if (!Ws) throw new TypeError("no WebSocket implementation: pass options.WebSocket (e.g. the ws package in Node)");
    this._Ws = Ws;
    const browser = platform.location !== undefined && platform.navigator?.product !== "ReactNative";
    this._o = {
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
    this._wsOptions = options.webSocketOptions;
    this._storage = options.storage;
    this._lifecycle =
      options.lifecycle === null ? undefined : (options.lifecycle ?? (platform.addEventListener ? browserLifecycle() : undefined));
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this._current;
  }

  /** The current connection's `welcome` (undefined while not connected). */
  get welcome(): Welcome | undefined {
    return this._info;
  }

  /**
   * Start connecting (and keep reconnecting). Resolves with the first
   * `welcome`; rejects if the client stops for good before one.
   */
  connect(): Promise<Welcome> {
    if (this._current === "closed") return Promise.reject(new SluiceError(ClientErrorCode.closed, "the client is closed"));
    if (this._current === "open" && this._info) return Promise.resolve(this._info);
    const p = new Promise<Welcome>((resolve, reject) => this._waiters.push({ resolve, reject }));
    // Callers that do not wait for it must not get an unhandled rejection.
    p.catch(() => undefined);
    if (this._current === "idle") {
      this._unlisten = this._lifecycle?.subscribe(this._onLifecycle);
      this._loaded = this._restore();
      void this._open();
    } else if (this._current === "suspended") {
      void this._open();
    }
    return p;
  }

  /** Close for good: pending and queued requests fail with `closed`. */
  close(): void {
    this._stop({ code: 1000, reason: "", why: "closed by the app" });
  }

  /**
   * Send a message of `type` (a route of the tenant) and resolve with the
   * ack's data; reject with a {@link SluiceError}.
   */
  request<T = unknown>(type: string, data?: unknown, options: RequestOptions = {}): Promise<T> {
    return this._call<T>(type, data, options, false);
  }

  /**
   * A request; `internal` ones (subscribe, refresh) go out at once while
   * connected, ahead of the queue and the rate-limit hold, and are never
   * refused for a full queue.
   */
  private _call<T>(type: string, data: unknown, options: RequestOptions, internal: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => this._send(type, data, options, internal, resolve as (d: unknown) => void, reject));
  }

  /** Send (or queue) a message; exactly one of `resolve` and `reject` is called, synchronously on its answer. */
  private _send(
    type: string,
    data: unknown,
    options: RequestOptions,
    internal: boolean,
    resolve: (data: unknown) => void,
    reject: (error: SluiceError) => void,
  ): void {
    if (this._current === "closed") {
      reject(new SluiceError(ClientErrorCode.closed, "the client is closed"));
      return;
    }
    // Reserved types are idempotent already; the server takes keys on routes only.
    const reserved = /^(subscribe|unsubscribe|presence|ping|refresh)$|^sluice\./.test(type);
    const key = internal || reserved ? undefined : (options.key ?? randomKey(this._o.random));
    if (key !== undefined) {
      const same = [...this._pending.values()].find((p) => p.key === key);
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
    const id = this._id();
    const entry: Pending = { id, type, channel: options.channel, data, key, sent: false, at: Date.now(), timer: undefined, resolve, reject };
    const timeoutMs = options.timeoutMs ?? this._o.requestTimeoutMs;
    entry.timer = later(() => this._expire(id, `no answer to ${type} within ${timeoutMs} ms`), timeoutMs);
    this._pending.set(id, entry);
    if (internal ? this._current === "open" && this._ws !== undefined : this._canSend() && this._queue.length === 0) {
      this._transmit(entry);
    } else if (internal || this._queue.length < this._o.maxQueue) {
      this._queue.push(id);
      this._armHold();
    } else {
      this._settle(id, new SluiceError(ClientErrorCode.queueFull, this._o.maxQueue === 0 ? "not connected" : `not connected and ${this._o.maxQueue} requests already wait`));
    }
    if (key !== undefined) this._save();
  }

  /** A request's time is up. */
  private _expire(id: string, why: string): void {
    const p = this._pending.get(id);
    if (!p) return;
    this._queue = this._queue.filter((q) => q !== id);
    const hint = p.until !== undefined ? `; it may have been applied: request again with its key (${p.key}) to learn its answer` : "";
    this._settle(id, new SluiceError(ClientErrorCode.timeout, why + hint, undefined, p.key));
  }

  /**
   * Subscribe to `channel` now and after every reconnect (resuming from the
   * last position where the server keeps channel history).
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this._current === "closed") this._forget(sub, new SluiceError(ClientErrorCode.closed, "the client is closed"));
    else if (this._current === "open") this._sendSubscribe(sub);
    return sub;
  }

  /** Every event (all channels, and those sent to this subject) as an async iterator. */
  events(): AsyncIterableIterator<SluiceEvent> {
    return this._stream(this._streams);
  }

  /** @internal */
  _stream(set: Set<EventStream<SluiceEvent>>): EventStream<SluiceEvent> {
    const s = new EventStream<SluiceEvent>(this._o.maxBufferedEvents, (done) => set.delete(done));
    if (this._current === "closed") s._end();
    else set.add(s);
    return s;
  }

  /** @internal Drop a subscription (unsubscribed, refused or dropped). */
  _forget(sub: Subscription, error: SluiceError | undefined): void {
    if (sub._state === "gone") return;
    sub._state = "gone";
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    for (const s of [...sub._streams]) s._end(error);
    if (!sub._settle.done) {
      sub._settle.done = true;
      sub._settle.reject(error ?? new SluiceError(ClientErrorCode.closed, "unsubscribed"));
    }
    if (error) sub._fire("error", error);
  }

  // --- connection ---------------------------------------------------------

  /** Report what was thrown as an `error` event. */
  private _fail(e: unknown): void {
    this.emit("error", e instanceof Error ? e : new Error(String(e)));
  }

  private _id(): string {
    this._nextId += 1;
    return String(this._nextId);
  }

  private _canSend(): boolean {
    return this._current === "open" && this._ws !== undefined && Date.now() >= this._holdUntil;
  }

  private _setState(state: ConnectionState): void {
    if (this._current === state) return;
    this._current = state;
    this.emit("state", state);
  }

  private async _open(): Promise<void> {
    this._timers.reconnect = undefined;
    this._away = undefined;
    if ((this._current as ConnectionState) === "closed" || this._ws) return;
    this._setState(this._attempt === 0 && this._info === undefined && !this._everOpen ? "connecting" : "reconnecting");
    await this._loaded;
    let token: string;
    try {
      token = await this._o.getToken();
    } catch (e) {
      if (this._current === "closed") return;
      this._fail(e);
      this._retry(1006, "getToken() failed", undefined, { retry: true, freshToken: true, immediate: false });
      return;
    }
    if (this._current === "closed") return;
    const header = this._o.tokenIn === "header";
    const protocols = header ? [SUBPROTOCOL] : [SUBPROTOCOL, `bearer.${token}`];
    let options = this._wsOptions;
    if (header) {
      const headers = { ...(options?.headers as Record<string, string> | undefined), Authorization: `Bearer ${token}` };
      options = { ...options, headers };
    }
    let ws: Socket;
    try {
      ws = (options ? new this._Ws(this._o.url, protocols, options) : new this._Ws(this._o.url, protocols)) as Socket;
    } catch (e) {
      // A malformed URL: retrying cannot help.
      this._stop({ code: 1006, reason: "", why: `cannot open ${this._o.url}: ${(e as Error).message}` });
      return;
    }
    this._ws = ws;
    let httpStatus: number | undefined;
    ws.onmessage = (ev) => {
      if (this._ws === ws) this._onFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    ws.onerror = (ev) => {
      // Node's ws reports a refused handshake as "Unexpected server response: 401".
      const e = ev as { message?: unknown; error?: { message?: unknown } };
      const m = /Unexpected server response: (\d{3})/.exec(String(e?.message ?? e?.error?.message ?? ""));
      if (m) httpStatus = Number(m[1]);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._lost(ev.code, ev.reason ?? "", httpStatus);
    };
  }
  /** Drop the current socket without waiting for a closing handshake. */
  private _drop(code: number, reason: string): void {
    if (!this._ws) return;
    release(this._ws);
    this._lost(code, reason, undefined);
  }

  /** The connection ended: clean up, then reconnect or stop. */
  private _lost(code: number, reason: string, httpStatus: number | undefined): void {
    const welcomed = this._current === "open";
    this._ws = undefined;
    this._info = undefined;
    this._inflight = [];
    for (const key of ["refresh", "heartbeat", "hold"] as const) {
      cancel(this._timers[key]);
      this._timers[key] = undefined;
    }
    // Sent with a key: resent first after the next welcome, in sending
    // order, while the server still remembers the key. The rest may or may
    // not have been applied: they fail.
    const resend: string[] = [];
    for (const [id, p] of [...this._pending]) {
      if (!p.sent) continue;
      p.sent = false;
      if (this._resendable(p)) resend.push(id);
      else this._lose(id);
    }
    this._queue = [...resend, ...this._queue];
    for (const sub of this._subs.values()) sub._state = "pending";
    if (this._current === "closed") return;
    if (this._away === true) {
      this._setState("suspended");
      return;
    }
    const decision = closeDecision(code, reason, welcomed ? undefined : httpStatus, this._last401);
    this._last401 = !welcomed && httpStatus === 401;
    this._retry(code, reason, welcomed ? undefined : httpStatus, decision);
  }

  private _retry(code: number, reason: string, httpStatus: number | undefined, decision: ReturnType<typeof closeDecision>): void {
    if (!decision.retry) {
      this._stop({ code, reason, why: decision.why });
      return;
    }
    if (this._attempt >= this._o.maxReconnectAttempts) {
      this._stop({ code, reason, why: `gave up after ${this._attempt} reconnect attempts` });
      return;
    }
    const delayMs = decision.immediate ? 0 : backoffDelay(this._attempt, this._o.backoff, this._o.random);
    const attempt = this._attempt;
    this._attempt += 1;
    this._setState("reconnecting");
    this.emit("disconnected", { code, reason, httpStatus, delayMs, attempt });
    this._timers.reconnect = later(() => void this._open(), delayMs);
  }

  private _stop(closed: Closed): void {
    if (this._current === "closed") return;
    this._setState("closed");
    this._unlisten?.();
    for (const t of Object.values(this._timers)) cancel(t);
    this._timers = {};
    const ws = this._ws;
    this._ws = undefined;
    this._info = undefined;
    if (ws) release(ws);
    const error = new SluiceError(ClientErrorCode.closed, `the client stopped: ${closed.why}`);
    for (const id of [...this._pending.keys()]) this._settle(id, error);
    this._queue = [];
    // Closed by the app: subscriptions and iterators end quietly.
    const quiet = closed.why === "closed by the app";
    for (const sub of [...this._subs.values()]) this._forget(sub, quiet ? undefined : error);
    for (const s of [...this._streams]) s._end();
    for (const w of this._waiters.splice(0)) w.reject(error);
    this.emit("closed", closed);
  }

  // --- frames -------------------------------------------------------------

  private _transmit(entry: Pending): void {
    const window = this._info?.idempotencyWindowSecs;
    const keyed = entry.key !== undefined && window !== undefined;
    // Sent with its key before: only with it again, and only in time.
    if (entry.until !== undefined && !(keyed && this._resendable(entry))) {
      this._lose(entry.id);
      return;
    }
    if (keyed && entry.until === undefined) entry.until = Date.now() + (window as number) * 1000 - RESEND_MARGIN_MS;
    if (!keyed) entry.bare = true;
    entry.sent = true;
    this._inflight.push(entry.id);
    const { id, type, channel, data } = entry;
    this._ws?.send(JSON.stringify({ type, id, key: keyed ? entry.key : undefined, channel, data }));
    if (entry.key !== undefined) this._save();
  }

  private _resendable(p: Pending): boolean {
    return p.until !== undefined && Date.now() < p.until;
  }

  private _lose(id: string): void {
    this._settle(id, new SluiceError(ClientErrorCode.connectionLost, "the connection dropped before the answer; the request may or may not have been applied"));
  }

  /** The id an answer is for: its own, or for an id-less error the oldest in flight. */
  private _answered(id: string | undefined): string | undefined {
    if (id === undefined) return this._inflight.shift();
    const i = this._inflight.indexOf(id);
    if (i >= 0) this._inflight.splice(i, 1);
    return id;
  }

  /** Resolve or reject pending request `id`. */
  private _settle(id: string, result: SluiceError | { data: unknown }): void {
    const p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    cancel(p.timer);
    if (result instanceof SluiceError) p.reject(result);
    else p.resolve(result.data);
    if (p.key !== undefined) this._save();
  }

  // --- the offline queue in storage ----------------------------------------

  /** Write the app's pending requests to storage (once per turn of the event loop). */
  private _save(): void {
    const storage = this._storage;
    if (!storage || this._saving || this._loaded === undefined) return;
    this._saving = true;
    void this._loaded
      .then(() => {
        this._saving = false;
        const items = [...this._pending.values()]
          .filter((p) => p.key !== undefined)
          .map(({ key, type, channel, data, at, until, bare }) => ({ key, type, channel, data, at, until, bare }));
        return items.length > 0 ? storage.setItem(this._o.storageKey, JSON.stringify(items)) : storage.removeItem(this._o.storageKey);
      })
      .catch((e: unknown) => this._fail(e));
  }

  /** Put the requests a previous run left in storage at the head of the queue. */
  private async _restore(): Promise<void> {
    const storage = this._storage;
    if (!storage) return;
    let items: unknown;
    try {
      items = JSON.parse((await storage.getItem(this._o.storageKey)) ?? "[]");
    } catch (e) {
      this._fail(e);
      return;
    }
    if (!Array.isArray(items)) return;
    const restored: string[] = [];
    for (const item of items) {
      if (!isObject(item) || typeof item.key !== "string" || typeof item.type !== "string" || typeof item.at !== "number") continue;
      if ([...this._pending.values()].some((p) => p.key === item.key)) continue;
      const { key, type, data } = item;
      const channel = str(item.channel);
      const id = this._id();
      const report = (end: { result?: unknown; error?: SluiceError }): void => this.emit("settled", { key, type, channel, data, ...end });
      const left = item.at + this._o.maxQueueAgeMs - Date.now();
      if (item.bare || left <= 0) {
        // Sent without a key before the app stopped: it may have been applied.
        report({
          error: item.bare
            ? new SluiceError(ClientErrorCode.connectionLost, "sent without a key before the app stopped; it may or may not have been applied", undefined, key)
            : new SluiceError(ClientErrorCode.timeout, `not sent within ${this._o.maxQueueAgeMs} ms`, undefined, key),
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
      this._pending.set(id, entry);
      entry.timer = later(() => this._expire(id, `not sent within ${this._o.maxQueueAgeMs} ms`), left);
      restored.push(id);
    }
    this._queue = [...restored, ...this._queue];
  }

  // --- the app's lifecycle --------------------------------------------------

  /** In the background past the grace period: close until the foreground. */
  private _suspend(): void {
    this._timers.away = undefined;
    this._away = true;
    cancel(this._timers.reconnect);
    this._timers.reconnect = undefined;
    if (this._ws) this._drop(1000, "in the background");
    else this._setState("suspended");
  }

  /** Send queued requests, in order, as far as the rate-limit hold allows. */
  private _flush(): void {
    while (this._queue.length > 0 && this._canSend()) {
      const id = this._queue.shift() as string;
      const p = this._pending.get(id);
      if (p) this._transmit(p);
    }
    this._armHold();
  }

  /** After a `rate_limited`, wait `retry_after_ms` before sending more. */
  private _armHold(): void {
    if (this._timers.hold !== undefined || this._queue.length === 0 || this._current !== "open") return;
    const wait = this._holdUntil - Date.now();
    if (wait <= 0) return;
    this._timers.hold = later(() => {
      this._timers.hold = undefined;
      this._flush();
    }, wait);
  }

  private _onFrame(text: string): void {
    this._lastReceived = Date.now();
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
    const sub = this._subs.get(msg.channel as string);
    switch (msg.type) {
      case "welcome": {
        const d = isObject(msg.data) ? msg.data : {};
        const window = isObject(d.idempotency) ? Number(d.idempotency.window_secs) : NaN;
        this._info = {
          connectionId: Number(d.connection_id),
          subject: String(d.subject),
          expiresAt: Number(d.expires_at),
          idempotencyWindowSecs: window > 0 ? window : undefined,
        };
        this._attempt = 0;
        this._last401 = false;
        this._everOpen = true;
        this._setState("open");
        this.emit("welcome", this._info);
        for (const w of this._waiters.splice(0)) w.resolve(this._info);
        this._scheduleRefresh();
        this._scheduleHeartbeat(this._o.heartbeatIntervalMs);
        for (const sub of this._subs.values()) this._sendSubscribe(sub);
        this._flush();
        return;
      }
      case "ack":
        if (id !== undefined) this._settle(this._answered(id) as string, { data: msg.data ?? null });
        return;
      case "pong":
        this._answered(id);
        return;
      case "error": {
        id = this._answered(id);
        const retryAfterMs = num(msg.retry_after_ms);
        if (msg.code === "rate_limited" && retryAfterMs !== undefined) {
          this._holdUntil = Math.max(this._holdUntil, Date.now() + retryAfterMs);
        }
        const error = new SluiceError(String(msg.code), String(msg.message ?? ""), retryAfterMs, id === undefined ? undefined : this._pending.get(id)?.key);
        if (id !== undefined && this._pending.has(id)) this._settle(id, error);
        else this.emit("error", error);
        return;
      }
      case "event":
        this._onEvent(msg, sub);
        return;
      case "subscribed": {
        // A handler subscribed this connection (e.g. `chat.join`): the
        // position part of a subscribe ack, before any replayed event.
        if (sub && sub._state !== "gone") this._position(sub, msg.data);
        return;
      }
      case "unsubscribed": {
        // The server ended a subscription (a reload's channel rules no
        // longer allow it): gone for good, like a refused subscribe.
        const reason = str(msg.reason) ?? "the server ended this subscription";
        if (sub) this._forget(sub, new SluiceError("forbidden", reason));
        return;
      }
      case "join":
      case "leave": {
        const d = isObject(msg.data) ? msg.data : {};
        if (sub && sub._state !== "gone") {
          sub._fire(msg.type, { channel: sub.channel, subject: String(d.subject), claims: isObject(d.claims) ? d.claims : {} });
        }
        return;
      }
      default:
        return;
    }
  }

  private _onEvent(msg: Record<string, unknown>, sub: Subscription | undefined): void {
    const event: SluiceEvent = { channel: str(msg.channel), data: msg.data };
    if (typeof msg.offset === "number" && typeof msg.epoch === "string") {
      event.offset = msg.offset;
      event.epoch = msg.epoch;
      if (sub) {
        const p = sub._position;
        // Already delivered (a replay overlapping what arrived before the drop).
        if (p && p.epoch === msg.epoch && msg.offset <= p.offset) return;
        sub._position = { offset: msg.offset, epoch: msg.epoch };
      }
    }
    this.emit("event", event);
    for (const s of this._streams) s._push(event);
    if (sub && sub._state !== "gone") {
      sub._fire("event", event);
      for (const s of sub._streams) s._push(event);
    }
  }

  // --- subscriptions ------------------------------------------------------

  private _sendSubscribe(sub: Subscription): void {
    const reserved = sub._options.type === undefined || sub._options.type === "subscribe";
    const since = (sub._options.recover ?? reserved) ? sub._position : undefined;
    sub._asked = since;
    sub._recovered = undefined;
    let data = sub._options.data;
    if (since) data = { ...(isObject(data) ? data : {}), since };
    const ws = this._ws;
    this._send(
      sub._options.type ?? "subscribe",
      data,
      { channel: sub.channel },
      true,
      (ack) => this._subscribed(sub, ack, reserved),
      (error: SluiceError) => {
        if (sub._state === "gone" || this._ws !== ws) return; // Resent on the next connection.
        if (error.code === ClientErrorCode.timeout) {
          sub._fire("error", error);
        } else if (error.retryAfterMs !== undefined || TEMPORARY_SUBSCRIBE_ERRORS.includes(error.code)) {
          // Refused for now (rate limit, overload, a handler out of time):
          // asked again after `retry_after_ms`, or with the reconnect
          // backoff, until it is answered or refused for good.
          later(() => {
            if (this._ws === ws && sub._state === "pending" && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
          }, error.retryAfterMs ?? backoffDelay(sub._tries++, this._o.backoff, this._o.random));
        } else if (error.code !== ClientErrorCode.closed && error.code !== ClientErrorCode.connectionLost) {
          this._forget(sub, error);
        }
      },
    );
  }

  private _subscribed(sub: Subscription, data: unknown, reserved: boolean): void {
    if (sub._state === "gone") return;
    // A route's ack is its handler's reply; its position came in a `subscribed` frame.
    if (reserved) this._position(sub, data);
    sub._tries = 0;
    const resubscribed = sub._everActive;
    sub._everActive = true;
    sub._state = "active";
    if (!sub._settle.done) {
      sub._settle.done = true;
      sub._settle.resolve(data);
    }
    sub._fire("subscribed", { data, resubscribed, recovered: sub._recovered });
  }

  /**
   * The position part of a subscribe ack or a `subscribed` frame:
   * `{ offset, epoch }` where the channel keeps history, and `recovered`
   * when a recovery was asked for.
   */
  private _position(sub: Subscription, data: unknown): void {
    if (!isObject(data)) return;
    const current =
      typeof data.offset === "number" && typeof data.epoch === "string" ? { offset: data.offset, epoch: data.epoch } : undefined;
    if (typeof data.recovered !== "boolean") {
      if (current && !sub._position) sub._position = current;
      return;
    }
    sub._recovered = data.recovered;
    // Recovered: the missed events follow and advance the position.
    if (data.recovered) return;
    const since = sub._asked ?? sub._position;
    sub._position = current;
    if (since) {
      const info: RecoveryFailed = { channel: sub.channel, since, current };
      sub._fire("recoveryFailed", info);
      this.emit("recoveryFailed", info);
    }
  }

  // --- token refresh and heartbeat ---------------------------------------

  private _scheduleRefresh(previousExpiry?: number): void {
    cancel(this._timers.refresh);
    this._timers.refresh = undefined;
    const info = this._info;
    if (!this._o.refreshBeforeExpiry || !info || !Number.isFinite(info.expiresAt)) return;
    // A refresh that did not extend the token: let it expire, then
    // reconnect with a fresh one, rather than refresh in a loop.
    if (previousExpiry !== undefined && info.expiresAt <= previousExpiry) return;
    const remaining = info.expiresAt * 1000 - Date.now();
    const delay = Math.max(1000, remaining - Math.min(this._o.refreshMarginMs, remaining / 5));
    // Timers take at most 2^31-1 ms (24.8 days); a longer delay would fire at once.
    this._timers.refresh = later(() => void this._refresh(), Math.min(delay, 2 ** 31 - 1));
  }

  private async _refresh(): Promise<void> {
    this._timers.refresh = undefined;
    const ws = this._ws;
    const info = this._info;
    if (!ws || !info) return;
    let token: string;
    try {
      token = await this._o.getToken();
    } catch (e) {
      this._fail(e);
      this._scheduleRefresh();
      return;
    }
    if (this._ws !== ws) return;
    const ack = (await this._call("refresh", { token }, {}, true).catch((e: SluiceError) => e)) as unknown;
    if (this._ws !== ws || !this._info) return;
    if (ack instanceof SluiceError) {
      this.emit("error", ack);
      this._scheduleRefresh();
      return;
    }
    const d = isObject(ack) ? ack : {};
    const expiresAt = Number(d.expires_at);
    const dropped = Array.isArray(d.dropped) ? d.dropped.map(String) : [];
    this._info = { ...this._info, expiresAt };
    for (const channel of dropped) {
      const sub = this._subs.get(channel);
      if (sub) this._forget(sub, new SluiceError("forbidden", "the refreshed token does not allow this channel"));
    }
    this.emit("refreshed", { expiresAt, dropped });
    this._scheduleRefresh(info.expiresAt);
  }

  /** Check the connection is alive after `first` ms (0: ping at once), then every `heartbeatIntervalMs` of silence. */
  private _scheduleHeartbeat(first: number): void {
    cancel(this._timers.heartbeat);
    const interval = this._o.heartbeatIntervalMs;
    if (interval <= 0) return;
    if (first > 0) this._lastReceived = Date.now();
    const tick = (force?: boolean): void => {
      const idle = Date.now() - this._lastReceived;
      if (idle < interval && !force) {
        this._timers.heartbeat = later(tick, interval - idle);
        return;
      }
      const sentAt = Date.now();
      this._inflight.push("heartbeat");
      this._ws?.send(JSON.stringify({ type: "ping", id: "heartbeat" }));
      this._timers.heartbeat = later(() => {
        if (this._lastReceived < sentAt) this._drop(1006, "heartbeat timeout");
        else tick();
      }, this._o.heartbeatTimeoutMs);
    };
    this._timers.heartbeat = later(() => tick(first === 0), first);
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
