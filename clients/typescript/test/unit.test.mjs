// The client against a scripted WebSocket and a fake clock: backoff
// timings, which closes stop it, the queue, timeouts, the rate-limit hold,
// the heartbeat, recovery bookkeeping (subscribe acks and handlers'
// `subscribed` frames) and presence events. No server, no real time.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { buildSync } from "esbuild";
import { SluiceClient, SluiceError, backoffDelay, DEFAULT_BACKOFF } from "../dist/index.js";

/** A WebSocket whose server side the test plays. */
class FakeSocket {
  static all = [];
  constructor(url, protocols, options) {
    this.url = url;
    this.protocols = protocols;
    this.options = options;
    this.sent = [];
    this.closed = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.closed = true;
  }
  // The server's side:
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  welcome(id = 1, expiresAt = Math.floor(Date.now() / 1000) + 3600) {
    this.frame({ type: "welcome", data: { connection_id: id, subject: "alice", expires_at: expiresAt } });
  }
  serverClose(code, reason = "") {
    this.onclose?.({ code, reason });
  }
  refuse(status) {
    this.onerror?.({ message: `Unexpected server response: ${status}` });
    this.onclose?.({ code: 1006, reason: "" });
  }
  last() {
    return this.sent[this.sent.length - 1];
  }
}
const latest = () => FakeSocket.all[FakeSocket.all.length - 1];
/** Let promise callbacks (getToken, request settlements) run. */
const settle = () => new Promise((r) => setImmediate(r));
async function advance(ms) {
  mock.timers.tick(ms);
  await settle();
}

let tokens;
function client(extra = {}) {
  tokens = 0;
  return new SluiceClient({
    url: "wss://example.test/ws/demo",
    getToken: () => `token-${++tokens}`,
    WebSocket: FakeSocket,
    random: () => 0.5,
    backoff: { initialDelayMs: 100, maxDelayMs: 1000 },
    heartbeatIntervalMs: 0,
    ...extra,
  });
}

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
});
afterEach(() => mock.timers.reset());

test("ws:// is refused except to this machine; wss:// and loopback ws:// connect", async () => {
  for (const url of [
    "ws://example.test/ws/demo",
    "WS://api.example.com:8080/ws/demo",
    "ws://10.0.0.5/ws/demo",
    "ws://localhost.example.test/ws/demo",
    "ws://127.0.0.1.example.test/ws/demo",
    "ws://user@localhost/ws/demo",
    "http://example.test/ws/demo",
    "example.test/ws/demo",
  ]) {
    assert.throws(() => client({ url }), TypeError, url);
  }
  assert.throws(() => client({ url: "ws://example.test/ws/demo" }), /plaintext.*use wss:\/\//);
  assert.equal(FakeSocket.all.length, 0, "nothing was opened");
  for (const url of [
    "wss://example.test/ws/demo",
    "ws://localhost:8080/ws/demo",
    "ws://127.0.0.1:8080/ws/demo",
    "ws://[::1]:8080/ws/demo",
    "ws://LOCALHOST/ws/demo",
  ]) {
    const c = client({ url });
    const welcomed = c.connect();
    await settle();
    assert.equal(latest().url, url);
    latest().welcome();
    assert.equal((await welcomed).subject, "alice", url);
    c.close();
  }
});

test("backoff: full jitter under an exponential ceiling, capped", () => {
  const top = () => 0.999999;
  const ceilings = [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, DEFAULT_BACKOFF, top));
  assert.deepEqual(ceilings, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999]);
  assert.equal(backoffDelay(5, DEFAULT_BACKOFF, () => 0), 0);
  const seen = new Set();
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3, DEFAULT_BACKOFF, Math.random);
    assert.ok(d >= 0 && d < 4000, `${d}`);
    seen.add(Math.floor(d / 1000));
  }
  assert.equal(seen.size, 4, "delays spread over the whole range");
});

test("reconnects after the backoff delay, growing per failure, reset by a welcome", async () => {
  const c = client();
  const delays = [];
  c.on("disconnected", (d) => delays.push(d.delayMs));
  c.connect();
  await settle();
  assert.equal(FakeSocket.all.length, 1);
  latest().welcome();
  assert.equal(c.state, "open");

  latest().serverClose(1006);
  for (const expected of [50, 100, 200, 400, 500, 500]) {
    await advance(expected - 1);
    const before = FakeSocket.all.length;
    assert.equal(c.state, "reconnecting");
    await advance(1);
    assert.equal(FakeSocket.all.length, before + 1, `a new attempt after ${expected} ms`);
    latest().serverClose(1006);
  }
  await advance(500);
  latest().welcome();
  latest().serverClose(1001, "server shutting down");
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500, 500, 50]);
  assert.equal(tokens, FakeSocket.all.length, "a token per attempt");
  c.close();
});

test("stops for good on do-not-retry closes and says why", async () => {
  for (const [code, reason, fragment] of [
    [1002, "", "protocol violation"],
    [1007, "", "not UTF-8"],
    [1000, "bye", "closed by the server's handler"],
    [4003, "kicked", "own code 4003 (kicked)"],
  ]) {
    FakeSocket.all = [];
    const c = client();
    const closed = [];
    c.on("closed", (e) => closed.push(e));
    c.connect();
    await settle();
    latest().welcome();
    const pending = c.request("echo", {});
    latest().serverClose(code, reason);
    await assert.rejects(pending, (e) => e instanceof SluiceError && e.code === "connection_lost");
    await advance(60_000);
    assert.equal(FakeSocket.all.length, 1, `no reconnect after ${code}`);
    assert.equal(c.state, "closed");
    assert.equal(closed.length, 1);
    assert.equal(closed[0].code, code);
    assert.ok(closed[0].why.includes(fragment), closed[0].why);
    await assert.rejects(c.request("echo", {}), { code: "closed" });
  }
});

test("idle timeout and server shutdown are retried", async () => {
  for (const [code, reason] of [[1000, "idle timeout"], [1001, "server shutting down"], [1013, ""], [1011, ""]]) {
    FakeSocket.all = [];
    const c = client();
    c.connect();
    await settle();
    latest().welcome();
    latest().serverClose(code, reason);
    await advance(50);
    assert.equal(FakeSocket.all.length, 2, `reconnects after ${code} ${reason}`);
    c.close();
  }
});

test("1008 token expired: a new token, reconnecting at once", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  latest().serverClose(1008, "token expired");
  await advance(0);
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(latest().options.headers.Authorization, "Bearer token-2");
  c.close();
});

test("a refused handshake: 401 retries once with a fresh token, 403 and 404 stop", async () => {
  let c = client();
  let closed;
  c.on("closed", (e) => (closed = e));
  c.connect().catch(() => {});
  await settle();
  latest().refuse(401);
  await advance(0);
  assert.equal(FakeSocket.all.length, 2, "retried at once");
  latest().refuse(401);
  await advance(60_000);
  assert.equal(FakeSocket.all.length, 2);
  assert.match(closed.why, /401/);

  for (const status of [403, 404]) {
    FakeSocket.all = [];
    c = client();
    const connected = c.connect();
    await settle();
    latest().refuse(status);
    await assert.rejects(connected, (e) => e.code === "closed" && e.message.includes(String(status)));
    await advance(60_000);
    assert.equal(FakeSocket.all.length, 1);
  }
  // 429 (over the connection caps) is retried with backoff.
  FakeSocket.all = [];
  c = client();
  c.connect();
  await settle();
  latest().refuse(429);
  await advance(50);
  assert.equal(FakeSocket.all.length, 2);
  c.close();
});

test("gives up after maxReconnectAttempts", async () => {
  const c = client({ maxReconnectAttempts: 2 });
  let closed;
  c.on("closed", (e) => (closed = e));
  c.connect().catch(() => {});
  await settle();
  latest().serverClose(1006);
  await advance(50);
  latest().serverClose(1006);
  await advance(100);
  latest().serverClose(1006);
  await advance(10_000);
  assert.equal(FakeSocket.all.length, 3);
  assert.match(closed.why, /gave up after 2/);
});

test("requests made while disconnected wait in a bounded queue, sent in order", async () => {
  const c = client({ maxQueue: 2 });
  c.connect();
  await settle();
  const a = c.request("echo", { n: 1 });
  const b = c.request("echo", { n: 2 });
  await assert.rejects(c.request("echo", { n: 3 }), (e) => e instanceof SluiceError && e.code === "queue_full");
  latest().welcome();
  assert.deepEqual(latest().sent.map((f) => f.data.n), [1, 2]);
  for (const f of latest().sent) latest().frame({ type: "ack", id: f.id, data: f.data });
  assert.deepEqual(await Promise.all([a, b]), [{ n: 1 }, { n: 2 }]);
  c.close();

  FakeSocket.all = [];
  const strict = client({ maxQueue: 0 });
  strict.connect();
  await settle();
  await assert.rejects(strict.request("echo", {}), { code: "queue_full", message: "not connected" });
  strict.close();
});

test("requests time out, queued time included", async () => {
  const c = client({ requestTimeoutMs: 1000 });
  c.connect();
  await settle();
  const queued = assert.rejects(c.request("echo", {}), { code: "timeout" });
  await advance(600);
  latest().welcome();
  let settled = false;
  const sent = assert.rejects(c.request("echo", {}, { timeoutMs: 200 }), { code: "timeout" }).then(() => (settled = true));
  await advance(199);
  assert.equal(settled, false);
  await advance(1);
  await sent;
  await advance(200);
  await queued;
  // A late ack for a timed-out request is ignored.
  latest().frame({ type: "ack", id: latest().sent[0].id, data: 1 });
  c.close();
});

test("server errors reject with code, message and retryAfterMs; rate_limited holds later sends", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  const r = c.request("chat.send", { text: "x" }, { channel: "room:1" });
  const frame = latest().last();
  assert.deepEqual(frame, { type: "chat.send", id: frame.id, channel: "room:1", data: { text: "x" } });
  latest().frame({ type: "error", id: frame.id, code: "rate_limited", message: "too many messages", retry_after_ms: 300 });
  const e = await r.catch((x) => x);
  assert.ok(e instanceof SluiceError);
  assert.deepEqual([e.code, e.message, e.retryAfterMs], ["rate_limited", "too many messages", 300]);

  const next = c.request("echo", { after: "hold" });
  assert.equal(latest().sent.length, 1, "held back");
  await advance(299);
  assert.equal(latest().sent.length, 1);
  await advance(1);
  assert.equal(latest().sent.length, 2, "sent once retry_after_ms passed");
  latest().frame({ type: "ack", id: latest().last().id, data: null });
  assert.equal(await next, null);
  c.close();
});

test("the token goes in a header or, for browsers, in the subprotocol", async () => {
  const h = client({ webSocketOptions: { ca: "PEM" } });
  h.connect();
  await settle();
  assert.deepEqual(latest().protocols, ["sluice.v1"]);
  assert.deepEqual(latest().options, { ca: "PEM", headers: { Authorization: "Bearer token-1" } });
  h.close();
  const s = client({ tokenIn: "subprotocol" });
  s.connect();
  await settle();
  assert.deepEqual(latest().protocols, ["sluice.v1", "bearer.token-1"]);
  assert.equal(latest().options, undefined);
  s.close();
});

test("refresh before expiry, at most a fifth of the remaining life early", async () => {
  const c = client();
  const refreshed = [];
  c.on("refreshed", (r) => refreshed.push(r));
  c.connect();
  await settle();
  const now = Date.now() / 1000;
  latest().welcome(1, now + 10);
  await advance(7999);
  assert.equal(latest().sent.length, 0);
  await advance(1);
  const frame = latest().last();
  assert.deepEqual(frame.data, { token: "token-2" });
  assert.equal(frame.type, "refresh");
  latest().frame({ type: "ack", id: frame.id, data: { expires_at: now + 3600, dropped: [] } });
  await settle();
  assert.deepEqual(refreshed, [{ expiresAt: now + 3600, dropped: [] }]);
  assert.equal(c.welcome.expiresAt, now + 3600);
  // Next one 30 s before the new expiry.
  await advance(3600_000 - 8000 - 30_000 - 1);
  assert.equal(latest().sent.length, 1);
  await advance(1);
  assert.equal(latest().sent.length, 2);
  c.close();
});

test("heartbeat: a silent connection is dropped and reconnected", async () => {
  const c = client({ heartbeatIntervalMs: 1000, heartbeatTimeoutMs: 500 });
  c.connect();
  await settle();
  latest().welcome();
  await advance(1000);
  assert.deepEqual(latest().last(), { type: "ping", id: "heartbeat" });
  latest().frame({ type: "pong", id: "heartbeat" });
  await advance(500);
  assert.equal(FakeSocket.all.length, 1, "answered: kept");
  await advance(1000);
  assert.equal(latest().sent.length, 2);
  await advance(500);
  assert.equal(latest().closed, true);
  await advance(50);
  assert.equal(FakeSocket.all.length, 2, "silent: reconnected");
  c.close();
});

test("subscriptions: resubscribed after a reconnect; refused ones end with the error", async () => {
  const c = client();
  c.connect();
  await settle();
  const sub = c.subscribe("room:1");
  latest().welcome();
  const s1 = latest().last();
  assert.deepEqual(s1, { type: "subscribe", id: s1.id, channel: "room:1" });
  latest().frame({ type: "ack", id: s1.id, data: null });
  assert.equal(await sub.ready, null);
  const events = [];
  sub.on("event", (e) => events.push(e.data));
  latest().frame({ type: "event", channel: "room:1", data: 1 });
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(2);
  const s2 = latest().last();
  assert.equal(s2.type, "subscribe");
  assert.equal(s2.channel, "room:1");
  assert.equal(s2.data, undefined, "no since without a position from the server");
  const subscribed = [];
  sub.on("subscribed", (s) => subscribed.push(s));
  latest().frame({ type: "ack", id: s2.id, data: null });
  assert.deepEqual(subscribed, [{ data: null, resubscribed: true, recovered: undefined }]);
  latest().frame({ type: "event", channel: "room:1", data: 2 });
  assert.deepEqual(events, [1, 2]);

  const denied = c.subscribe("admin:1");
  const errors = [];
  denied.on("error", (e) => errors.push(e.code));
  latest().frame({ type: "error", id: latest().last().id, code: "forbidden", message: "not allowed on this channel" });
  await assert.rejects(denied.ready, { code: "forbidden" });
  assert.deepEqual(errors, ["forbidden"]);

  // A reload's rules end room:1: the server says so, and the subscription
  // ends with a forbidden error (not resubscribed after the next drop).
  const ended = [];
  sub.on("error", (e) => ended.push([e.code, e.message]));
  latest().frame({ type: "unsubscribed", channel: "room:1", reason: "the channel rules no longer allow this subscription" });
  assert.deepEqual(ended, [["forbidden", "the channel rules no longer allow this subscription"]]);
  latest().frame({ type: "event", channel: "room:1", data: 3 });
  assert.deepEqual(events, [1, 2], "no event after the end");
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(3);
  assert.ok(!latest().sent.some((f) => f.type === "subscribe" && f.channel === "room:1"), "not resubscribed");
  c.close();
});

test("a subscribe refused for now (unavailable, handler_timeout) is asked again with backoff; refused for good, it ends", async () => {
  const c = client();
  c.connect();
  await settle();
  const room = c.subscribe("room:1", { type: "chat.join" });
  const errors = [];
  room.on("error", (e) => errors.push(e.code));
  latest().welcome();
  const joins = () => latest().sent.filter((f) => f.type === "chat.join");
  // A join handler out of time under load: asked again, not ended.
  latest().frame({ type: "error", id: joins()[0].id, code: "handler_timeout", message: "the handler ran out of time" });
  await settle();
  assert.equal(joins().length, 1);
  // random() is 0.5: half of the first backoff ceiling (100 ms), then of the second (200 ms).
  await advance(49);
  assert.equal(joins().length, 1, "not before the backoff");
  await advance(1);
  assert.equal(joins().length, 2, "asked again after the backoff");
  latest().frame({ type: "error", id: joins()[1].id, code: "unavailable", message: "every instance stayed busy" });
  await advance(99);
  assert.equal(joins().length, 2, "the second delay grows");
  await advance(1);
  assert.equal(joins().length, 3);
  assert.equal(room.active, false, "pending meanwhile");
  latest().frame({ type: "ack", id: joins()[2].id, data: { history: [] } });
  assert.deepEqual(await room.ready, { history: [] });
  assert.equal(room.active, true);
  assert.deepEqual(errors, [], "no error for a refusal that was retried");

  // Refused for good: ends with the error, never asked again.
  const denied = c.subscribe("room:2", { type: "chat.join" });
  denied.on("error", (e) => errors.push(e.code));
  const asked = joins().length;
  latest().frame({ type: "error", id: latest().last().id, code: "forbidden", message: "not allowed on this channel" });
  await assert.rejects(denied.ready, { code: "forbidden" });
  await advance(5000);
  assert.equal(joins().length, asked);
  assert.deepEqual(errors, ["forbidden"]);
  c.close();
});

test("recovery: resubscribes with since, drops replayed duplicates, reports a failed recovery", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  const sub = c.subscribe("room:1");
  latest().frame({ type: "ack", id: latest().last().id, data: { recovered: false, offset: 10, epoch: "e1" } });
  await sub.ready;
  const seen = [];
  sub.on("event", (e) => seen.push(e.offset));
  for (const offset of [11, 12]) latest().frame({ type: "event", channel: "room:1", data: {}, offset, epoch: "e1" });
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(2);
  const resub = latest().last();
  assert.deepEqual(resub.data, { since: { offset: 12, epoch: "e1" } });
  // The replay overlaps what was delivered: 12 again, then 13.
  for (const offset of [12, 13]) latest().frame({ type: "event", channel: "room:1", data: {}, offset, epoch: "e1" });
  latest().frame({ type: "ack", id: resub.id, data: { recovered: true, offset: 13, epoch: "e1" } });
  assert.deepEqual(seen, [11, 12, 13], "no gap, no duplicate");

  const failed = [];
  sub.on("recoveryFailed", (f) => failed.push(f));
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(3);
  const again = latest().last();
  assert.deepEqual(again.data, { since: { offset: 13, epoch: "e1" } });
  latest().frame({ type: "ack", id: again.id, data: { recovered: false, offset: 40, epoch: "e2" } });
  assert.deepEqual(failed, [{ channel: "room:1", since: { offset: 13, epoch: "e1" }, current: { offset: 40, epoch: "e2" } }]);
  latest().frame({ type: "event", channel: "room:1", data: {}, offset: 41, epoch: "e2" });
  assert.deepEqual(seen, [11, 12, 13, 41]);

  // The channel keeps no history any more (a reload changed its rule): no position.
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(4);
  const last = latest().last();
  assert.deepEqual(last.data, { since: { offset: 41, epoch: "e2" } });
  latest().frame({ type: "ack", id: last.id, data: { recovered: false } });
  assert.deepEqual(failed.at(-1), { channel: "room:1", since: { offset: 41, epoch: "e2" }, current: undefined });
  assert.equal(sub.lastPosition, undefined);
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(5);
  assert.equal(latest().last().data, undefined, "no since without a position");
  c.close();
});

test("a handler's subscription: `since` in the route's data with recover, positions from the `subscribed` frame", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  const sentFor = (channel) => latest().sent.filter((m) => m.channel === channel).at(-1);
  const room = c.subscribe("room:1", { type: "chat.join", data: { x: 1 }, recover: true, leave: { type: "chat.leave" } });
  const plain = c.subscribe("room:2", { type: "chat.join" });
  assert.deepEqual(sentFor("room:1").data, { x: 1 }, "no position yet");
  const seen = [];
  const subscribed = [];
  const failed = [];
  room.on("event", (e) => seen.push(e.offset));
  room.on("subscribed", (s) => subscribed.push(s));
  room.on("recoveryFailed", (f) => failed.push(f));
  const clientFailed = [];
  c.on("recoveryFailed", (f) => clientFailed.push(f));
  // The handler subscribes (the frame), then replies (the ack).
  latest().frame({ type: "subscribed", channel: "room:1", data: { offset: 10, epoch: "e1" } });
  latest().frame({ type: "ack", id: sentFor("room:1").id, data: { history: [] } });
  latest().frame({ type: "subscribed", channel: "room:2", data: { offset: 3, epoch: "e9" } });
  latest().frame({ type: "ack", id: sentFor("room:2").id, data: { history: [] } });
  assert.deepEqual(await room.ready, { history: [] });
  assert.deepEqual(subscribed, [{ data: { history: [] }, resubscribed: false, recovered: undefined }]);
  assert.deepEqual(room.lastPosition, { offset: 10, epoch: "e1" });
  assert.deepEqual(plain.lastPosition, { offset: 3, epoch: "e9" });
  for (const offset of [11, 12]) latest().frame({ type: "event", channel: "room:1", data: {}, offset, epoch: "e1" });

  // Recovered: the missed events follow the frame.
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(2);
  assert.deepEqual(sentFor("room:1").data, { x: 1, since: { offset: 12, epoch: "e1" } });
  assert.equal(sentFor("room:2").data, undefined, "a route without recover gets no since");
  latest().frame({ type: "subscribed", channel: "room:1", data: { offset: 14, epoch: "e1", recovered: true } });
  for (const offset of [13, 14]) latest().frame({ type: "event", channel: "room:1", data: {}, offset, epoch: "e1" });
  latest().frame({ type: "ack", id: sentFor("room:1").id, data: { history: [] } });
  assert.deepEqual(subscribed.at(-1), { data: { history: [] }, resubscribed: true, recovered: true });
  assert.deepEqual(seen, [11, 12, 13, 14]);
  assert.deepEqual(failed, []);

  // Not recovered (a new epoch): recoveryFailed, then live events from the current position.
  latest().serverClose(1006);
  await advance(50);
  latest().welcome(3);
  assert.deepEqual(sentFor("room:1").data, { x: 1, since: { offset: 14, epoch: "e1" } });
  latest().frame({ type: "subscribed", channel: "room:1", data: { offset: 50, epoch: "e2", recovered: false } });
  const expected = { channel: "room:1", since: { offset: 14, epoch: "e1" }, current: { offset: 50, epoch: "e2" } };
  assert.deepEqual(failed, [expected]);
  assert.deepEqual(clientFailed, [expected]);
  latest().frame({ type: "ack", id: sentFor("room:1").id, data: { history: [] } });
  assert.equal(subscribed.at(-1).recovered, false);
  latest().frame({ type: "event", channel: "room:1", data: {}, offset: 51, epoch: "e2" });
  assert.deepEqual(seen, [11, 12, 13, 14, 51]);
  assert.deepEqual(room.lastPosition, { offset: 51, epoch: "e2" });

  // A frame for a channel the app did not subscribe to is ignored.
  latest().frame({ type: "subscribed", channel: "room:3", data: { offset: 1, epoch: "e", recovered: false } });
  assert.equal(failed.length, 1);
  c.close();
});

test("presence: join and leave reach the subscription; presence() asks the server", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  const sub = c.subscribe("room:1");
  latest().frame({ type: "ack", id: latest().last().id, data: { offset: 0, epoch: "e" } });
  await sub.ready;
  const changes = [];
  const events = [];
  sub.on("join", (j) => changes.push(["join", j]));
  sub.on("leave", (l) => changes.push(["leave", l]));
  sub.on("event", (e) => events.push(e));
  latest().frame({ type: "join", channel: "room:1", data: { subject: "bob", claims: { name: "Bob" } } });
  latest().frame({ type: "join", channel: "room:9", data: { subject: "eve", claims: {} } });
  latest().frame({ type: "leave", channel: "room:1", data: { subject: "bob" } });
  assert.deepEqual(changes, [
    ["join", { channel: "room:1", subject: "bob", claims: { name: "Bob" } }],
    ["leave", { channel: "room:1", subject: "bob", claims: {} }],
  ]);
  assert.deepEqual(events, [], "presence changes are not events");

  const asked = sub.presence();
  assert.deepEqual(latest().last(), { type: "presence", id: latest().last().id, channel: "room:1" });
  const members = { members: [{ subject: "alice", connections: 2, claims: {} }], truncated: false };
  latest().frame({ type: "ack", id: latest().last().id, data: members });
  assert.deepEqual(await asked, members);
  c.close();
});

test("events as an async iterator, ending with the subscription", async () => {
  const c = client();
  c.connect();
  await settle();
  latest().welcome();
  const sub = c.subscribe("room:1");
  latest().frame({ type: "ack", id: latest().last().id, data: null });
  const got = [];
  const reading = (async () => {
    for await (const e of sub) got.push(e.data);
  })();
  for (const n of [1, 2, 3]) latest().frame({ type: "event", channel: "room:1", data: n });
  latest().frame({ type: "event", channel: "room:2", data: 99 });
  await settle();
  const leaving = sub.unsubscribe();
  assert.deepEqual(latest().last(), { type: "unsubscribe", id: latest().last().id, channel: "room:1" });
  latest().frame({ type: "ack", id: latest().last().id, data: null });
  await leaving;
  await reading;
  assert.deepEqual(got, [1, 2, 3]);
  c.close();
});

test("a browser `online` event cuts a backoff delay short", async () => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    const c = client({ backoff: { initialDelayMs: 60_000, maxDelayMs: 60_000 } });
    c.connect();
    await settle();
    latest().welcome();
    latest().serverClose(1006);
    await advance(1000);
    assert.equal(FakeSocket.all.length, 1, "waiting 30 s");
    target.dispatchEvent(new Event("online"));
    await settle();
    assert.equal(FakeSocket.all.length, 2, "tried at once");
    c.close();
    target.dispatchEvent(new Event("online"));
    await settle();
    assert.equal(FakeSocket.all.length, 2, "not after close");
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test("an error without an id (too_deep, bad_json) answers the oldest request in flight", async () => {
  const c = client({ heartbeatIntervalMs: 1000, heartbeatTimeoutMs: 500 });
  c.connect();
  await settle();
  latest().welcome();
  const a = c.request("echo", 1);
  const b = c.request("echo", 2);
  const [fa, fb] = latest().sent;
  latest().frame({ type: "error", id: null, code: "too_deep", message: "JSON nested deeper than 32 levels" });
  await assert.rejects(a, { code: "too_deep" });
  latest().frame({ type: "ack", id: fb.id, data: 2 });
  assert.equal(await b, 2);
  // A late answer to a timed-out request still keeps the order straight.
  const slow = assert.rejects(c.request("echo", 3, { timeoutMs: 100 }), { code: "timeout" });
  await advance(100);
  await slow;
  const next = c.request("echo", 4);
  const [, , fc, fd] = latest().sent;
  latest().frame({ type: "ack", id: fc.id, data: 3 });
  latest().frame({ type: "error", code: "bad_json", message: "not valid JSON" });
  await assert.rejects(next, { code: "bad_json" });
  assert.equal(fd.data, 4);
  assert.equal(fa.data, 1);
  c.close();
});

test("the minified bundle stays within the size budget: under 7 KB (7,000 bytes) gzipped (issue 28)", () => {
  const bytes = readFileSync(new URL("../dist/sluice-client.min.js", import.meta.url));
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  assert.ok(gzipped < 7000, `dist/sluice-client.min.js is ${gzipped} bytes gzipped, over the budget of 7,000: make it smaller`);
});

test("what an app gets stays within the budget too: the package's entry bundled by the app's bundler, under 7,000 bytes gzipped (issue 28)", () => {
  // As an app's bundler does: everything dist/index.js exports, minified,
  // with no property renaming of its own (the package ships the renamed names).
  const entry = new URL("../dist/index.js", import.meta.url).pathname;
  const out = buildSync({
    stdin: { contents: `export * from ${JSON.stringify(entry)};`, resolveDir: "/", loader: "js" },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    write: false,
    logLevel: "silent",
  });
  const gzipped = gzipSync(out.outputFiles[0].contents, { level: 9 }).length;
  assert.ok(gzipped < 7000, `an app bundling dist/index.js gets ${gzipped} bytes gzipped, over the budget of 7,000: make it smaller`);
});

test("no public name starts with an underscore: the package renames those (the shipped .d.ts)", () => {
  // dist/index.js renames every property named `_name`: the declarations may
  // show such names only as private members (or constructor parameters).
  const dir = new URL("../dist/", import.meta.url);
  const exposed = [];
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
    for (const [i, line] of readFileSync(new URL(f, dir), "utf8").split("\n").entries()) {
      if (/^\s*(\/\*\*|\*)/.test(line)) continue; // comments
      if (/^\s*private (readonly )?_\w+;$/.test(line) || /^\s*constructor\(/.test(line)) continue;
      if (/(^|[^\w$])_\w/.test(line)) exposed.push(`${f}:${i + 1}: ${line.trim()}`);
    }
  }
  assert.deepEqual(exposed, [], "public or protected names with a leading underscore (renamed in dist/index.js)");
});
