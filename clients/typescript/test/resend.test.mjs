// Exactly-once requests across reconnects, the offline queue in storage,
// and the app's lifecycle: the client against a scripted WebSocket on a
// fake clock (see unit.test.mjs). The server side the test plays sends
// `welcome` with `idempotency: { window_secs }` as a server that takes
// keys does, or without it as today's server does.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { SluiceClient, SluiceError } from "../dist/index.js";
import { memoryStorage, reactNativeLifecycle } from "../dist/adapters.js";

class FakeSocket {
  static all = [];
  constructor(url, protocols, options) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.closed = true;
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  welcome(opts = {}) {
    const window = "window" in opts ? opts.window : 300;
    const id = opts.id ?? 1;
    const data = { connection_id: id, subject: "alice", expires_at: Math.floor(Date.now() / 1000) + 3600 };
    if (window !== undefined) data.idempotency = { window_secs: window };
    this.frame({ type: "welcome", data });
  }
  /** The TCP connection is cut: no close frame. */
  cut() {
    this.onclose?.({ code: 1006, reason: "" });
  }
  ack(frame, data) {
    this.frame({ type: "ack", id: frame.id, data });
  }
}
const latest = () => FakeSocket.all[FakeSocket.all.length - 1];
const settle = () => new Promise((r) => setImmediate(r));
async function advance(ms) {
  mock.timers.tick(ms);
  await settle();
}

/** A lifecycle the test drives, as an app's adapter would. */
function fakeLifecycle() {
  const listeners = new Set();
  return {
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    emit(event) {
      for (const fn of listeners) fn(event);
    },
    get listening() {
      return listeners.size;
    },
  };
}

function client(extra = {}) {
  return new SluiceClient({
    url: "wss://example.test/ws/demo",
    getToken: () => "token",
    WebSocket: FakeSocket,
    random: () => 0.5,
    backoff: { initialDelayMs: 100, maxDelayMs: 1000 },
    heartbeatIntervalMs: 0,
    lifecycle: null,
    ...extra,
  });
}

async function connected(extra = {}, welcome = {}) {
  const c = client(extra);
  c.connect();
  await settle();
  latest().welcome(welcome);
  return c;
}

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
});
afterEach(() => mock.timers.reset());

test("every request carries a key, random or the app's own, only where the server takes keys", async () => {
  const c = await connected();
  const a = c.request("chat.send", { text: "a" }, { channel: "room:1" });
  const b = c.request("chat.send", { text: "b" }, { channel: "room:1", key: "msg:42" });
  const [fa, fb] = latest().sent;
  assert.match(fa.key, /^[A-Za-z0-9_-]{22}$/);
  assert.equal(fb.key, "msg:42");
  // Reserved types never carry one (the server refuses keys on them).
  c.request("presence", undefined, { channel: "room:1" }).catch(() => undefined);
  c.subscribe("room:2");
  for (const f of latest().sent.slice(2)) assert.equal(f.key, undefined, f.type);
  latest().ack(fa, { seq: 1 });
  latest().ack(fb, { seq: 2 });
  assert.deepEqual(await Promise.all([a, b]), [{ seq: 1 }, { seq: 2 }]);
  assert.equal(c.welcome.idempotencyWindowSecs, 300);
  c.close();

  // Today's server: no `idempotency` in its welcome, so no key is sent (it
  // would refuse the envelope).
  FakeSocket.all = [];
  const old = await connected({}, { window: undefined });
  old.request("echo", 1, { key: "k1" }).catch(() => undefined);
  assert.deepEqual(latest().sent[0], { type: "echo", id: latest().sent[0].id, data: 1 });
  assert.equal(old.welcome.idempotencyWindowSecs, undefined);
  old.close();
});

test("requests cut off by a drop are resent after the welcome and the resubscriptions, in order, with their keys", async () => {
  const c = await connected();
  const sub = c.subscribe("room:1");
  latest().ack(latest().sent[0], null);
  await sub.ready;
  const results = ["one", "two", "three"].map((text) => c.request("chat.send", { text }, { channel: "room:1" }));
  const first = latest().sent.slice(1);
  latest().ack(first[0], { seq: 1 });
  // The tunnel: the connection dies before the acks of two and three.
  latest().cut();
  // Made while disconnected: queued behind the resends.
  const four = c.request("chat.send", { text: "four" }, { channel: "room:1" });
  await advance(50);
  assert.equal(FakeSocket.all.length, 2);
  latest().welcome({ id: 2 });
  const again = latest().sent;
  assert.deepEqual(
    again.map((f) => [f.type, f.data?.text]),
    [["subscribe", undefined], ["chat.send", "two"], ["chat.send", "three"], ["chat.send", "four"]],
  );
  assert.equal(again[1].key, first[1].key, "the same key");
  assert.equal(again[2].key, first[2].key);
  // The server answers the retries with the first calls' answers.
  latest().ack(again[0], null);
  latest().ack(again[1], { seq: 2 });
  latest().ack(again[2], { seq: 3 });
  latest().ack(again[3], { seq: 4 });
  assert.deepEqual(await Promise.all([...results, four]), [{ seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 }]);
  c.close();
});

test("connection_lost only where a resend is not safe: no keys, or the window would have passed", async () => {
  // A server without keys: what was sent fails, as before.
  let c = await connected({}, { window: undefined });
  const bare = c.request("chat.send", { text: "x" }, { channel: "room:1" });
  latest().cut();
  await assert.rejects(bare, { code: "connection_lost" });
  c.close();

  // A 60 s window: a resend must arrive 5 s before it ends.
  FakeSocket.all = [];
  c = await connected({ requestTimeoutMs: 600_000, backoff: { initialDelayMs: 200_000, maxDelayMs: 200_000 } }, { window: 60 });
  const late = c.request("chat.send", { text: "late" }, { channel: "room:1" });
  let outcome;
  late.then(
    () => (outcome = "ok"),
    (e) => (outcome = e),
  );
  await advance(30_000);
  const soon = c.request("chat.send", { text: "soon" }, { channel: "room:1" }).catch((e) => e);
  latest().cut();
  await advance(25_000);
  assert.equal(outcome, undefined, "still waiting for a reconnect");
  await advance(100_000);
  latest().welcome({ window: 60 });
  await settle();
  // `late` was sent 155 s ago: its window passed; `soon` (125 s) too.
  assert.ok(outcome instanceof SluiceError && outcome.code === "connection_lost", String(outcome));
  assert.equal((await soon).code, "connection_lost");
  assert.equal(latest().sent.length, 0, "nothing resent");
  c.close();

  // A reconnect to a server that no longer takes keys: not resent bare.
  FakeSocket.all = [];
  c = await connected();
  const keyed = c.request("chat.send", { text: "k" }, { channel: "room:1" });
  latest().cut();
  await advance(50);
  latest().welcome({ window: undefined });
  await assert.rejects(keyed, { code: "connection_lost" });
  assert.equal(latest().sent.length, 0);
  c.close();
});

test("a timed-out request tells its key, and asking again with it joins or learns the answer", async () => {
  const c = await connected({ requestTimeoutMs: 1000 });
  const first = c.request("chat.send", { text: "x" }, { channel: "room:1", key: "k-1" });
  const e = await (advance(1000), first.catch((x) => x));
  assert.equal(e.code, "timeout");
  assert.equal(e.key, "k-1");
  assert.match(e.message, /request again with its key/);
  // Asking again sends the same key: the server replays the first answer.
  const again = c.request("chat.send", { text: "x" }, { channel: "room:1", key: "k-1" });
  const f = latest().sent.at(-1);
  assert.equal(f.key, "k-1");
  // Twice at once with one key: one frame, both answered.
  const twin = c.request("chat.send", { text: "x" }, { channel: "room:1", key: "k-1" });
  assert.equal(latest().sent.length, 2);
  await assert.rejects(c.request("chat.send", { text: "other" }, { channel: "room:1", key: "k-1" }), { code: "key_reused" });
  latest().ack(f, { seq: 9 });
  assert.deepEqual(await Promise.all([again, twin]), [{ seq: 9 }, { seq: 9 }]);
  // A server refusal names the key too.
  const refused = c.request("chat.send", { text: "y" }, { channel: "room:1", key: "k-2" });
  latest().frame({ type: "error", id: latest().sent.at(-1).id, code: "key_reused", message: "this key was used with another type, channel or data" });
  await assert.rejects(refused, (x) => x.code === "key_reused" && x.key === "k-2");
  c.close();
});

test("the offline queue survives a restart through storage and is sent once", async () => {
  const storage = memoryStorage();
  const writes = [];
  const spy = { ...storage, setItem: (k, v) => (writes.push(k), storage.setItem(k, v)) };
  // Offline from the start: the message waits in the queue, and in storage.
  let c = client({ storage: spy, storageKey: "q" });
  c.connect();
  await settle();
  const typed = c.request("chat.send", { text: "typed offline" }, { channel: "room:1", key: "draft-1" });
  typed.catch(() => undefined);
  await settle();
  assert.deepEqual(JSON.parse(storage.getItem("q")).map((i) => [i.key, i.data.text]), [["draft-1", "typed offline"]]);
  // The app is killed (no close, nothing more runs).
  c = undefined;

  FakeSocket.all = [];
  const settled = [];
  const next = client({ storage: spy, storageKey: "q" });
  next.on("settled", (s) => settled.push(s));
  next.connect();
  await settle();
  const made = next.request("chat.send", { text: "after restart" }, { channel: "room:1" });
  latest().welcome();
  const sent = latest().sent;
  assert.deepEqual(sent.map((f) => [f.key, f.data.text]), [["draft-1", "typed offline"], [sent[1].key, "after restart"]]);
  latest().ack(sent[0], { seq: 7 });
  latest().ack(sent[1], { seq: 8 });
  assert.deepEqual(await made, { seq: 8 });
  assert.deepEqual(settled, [{ key: "draft-1", type: "chat.send", channel: "room:1", data: { text: "typed offline" }, result: { seq: 7 } }]);
  await settle();
  assert.equal(storage.getItem("q"), null, "nothing left to send");
  next.close();

  // Restarted again: nothing is sent twice.
  FakeSocket.all = [];
  const third = client({ storage: spy, storageKey: "q" });
  third.connect();
  await settle();
  latest().welcome();
  assert.equal(latest().sent.length, 0);
  third.close();
});

test("restored requests: sent with a key and cut off, resent within the window; sent bare, lost; too old, dropped", async () => {
  const storage = memoryStorage();
  const now = Date.now();
  storage.setItem(
    "q",
    JSON.stringify([
      { key: "a", type: "chat.send", channel: "room:1", data: { n: 1 }, at: now - 10_000, until: now + 200_000 },
      { key: "b", type: "chat.send", channel: "room:1", data: { n: 2 }, at: now - 400_000, until: now - 100_000 },
      { key: "c", type: "chat.send", channel: "room:1", data: { n: 3 }, at: now - 1000, bare: true },
      { key: "d", type: "chat.send", channel: "room:1", data: { n: 4 }, at: now - 90_000_000 },
      { nonsense: true },
    ]),
  );
  const settled = [];
  const c = client({ storage, storageKey: "q" });
  c.on("settled", (s) => settled.push([s.key, s.error?.code ?? s.result]));
  c.connect();
  await settle();
  latest().welcome();
  assert.deepEqual(latest().sent.map((f) => [f.key, f.data.n]), [["a", 1]]);
  latest().ack(latest().sent[0], "ok");
  assert.deepEqual(settled.sort(), [["a", "ok"], ["b", "connection_lost"], ["c", "connection_lost"], ["d", "timeout"]]);
  c.close();
});

test("background: the socket closes after the grace period; foreground: reconnects at once and resends", async () => {
  const life = fakeLifecycle();
  const c = await connected({ lifecycle: life, backgroundGraceMs: 5000, requestTimeoutMs: 3_600_000 });
  const states = [];
  c.on("state", (s) => states.push(s));
  const sub = c.subscribe("room:1");
  latest().ack(latest().sent[0], { offset: 3, epoch: "e" });
  await sub.ready;
  const pending = c.request("chat.send", { text: "x" }, { channel: "room:1" });
  const key = latest().sent.at(-1).key;

  life.emit("background");
  await advance(4999);
  assert.equal(latest().closed, false, "kept through the grace period");
  life.emit("foreground");
  life.emit("background");
  await advance(4999);
  assert.equal(latest().closed, false, "the grace period starts again");
  await advance(1);
  assert.equal(latest().closed, true, "closed in the background");
  assert.equal(c.state, "suspended");
  await advance(200_000);
  assert.equal(FakeSocket.all.length, 1, "no reconnect in the background");
  const queued = c.request("chat.send", { text: "later" }, { channel: "room:1" });

  life.emit("foreground");
  await settle();
  assert.equal(FakeSocket.all.length, 2, "reconnects at once");
  latest().welcome({ id: 2 });
  const sent = latest().sent;
  assert.deepEqual(sent.map((f) => f.type), ["subscribe", "chat.send", "chat.send"]);
  assert.deepEqual(sent[0].data, { since: { offset: 3, epoch: "e" } }, "recovers from where it was");
  assert.equal(sent[1].key, key, "the cut-off request resent with its key");
  latest().ack(sent[1], 1);
  latest().ack(sent[2], 2);
  assert.deepEqual(await Promise.all([pending, queued]), [1, 2]);
  assert.deepEqual(states, ["suspended", "reconnecting", "open"]);
  c.close();
  assert.equal(life.listening, 0, "stops listening when closed");
});

test("a network change cuts a pending backoff short; foreground probes a connection that may have died", async () => {
  const life = fakeLifecycle();
  const c = await connected({ lifecycle: life, backoff: { initialDelayMs: 60_000, maxDelayMs: 60_000 }, heartbeatIntervalMs: 25_000, heartbeatTimeoutMs: 1000 });
  latest().cut();
  await advance(1000);
  assert.equal(FakeSocket.all.length, 1, "waiting out the backoff");
  life.emit("offline");
  await settle();
  assert.equal(FakeSocket.all.length, 1);
  life.emit("online");
  await settle();
  assert.equal(FakeSocket.all.length, 2, "tried at once");
  latest().welcome();
  await advance(30_000);
  latest().frame({ type: "pong", id: "heartbeat" });
  // Back to the foreground after a while: a ping at once, not after 25 s.
  await advance(10_000);
  const before = latest().sent.length;
  life.emit("foreground");
  await settle();
  await advance(0);
  assert.deepEqual(latest().sent.slice(before), [{ type: "ping", id: "heartbeat" }]);
  await advance(1000);
  assert.equal(latest().closed, true, "no answer: dropped and reconnected");
  c.close();
});

test("the React Native adapter maps AppState and NetInfo", () => {
  let appListener;
  let netListener;
  let removed = 0;
  const AppState = { addEventListener: (_, fn) => ((appListener = fn), { remove: () => removed++ }) };
  const NetInfo = { addEventListener: (fn) => ((netListener = fn), () => removed++) };
  const events = [];
  const stop = reactNativeLifecycle(AppState, NetInfo).subscribe((e) => events.push(e));
  netListener({ isConnected: true, type: "wifi" }); // the state at start
  appListener("inactive");
  appListener("background");
  appListener("active");
  netListener({ isConnected: true, type: "wifi" });
  netListener({ isConnected: true, type: "cellular" });
  netListener({ isConnected: false, type: "none" });
  netListener({ isConnected: null, type: "unknown" });
  netListener({ isConnected: true, type: "wifi" });
  assert.deepEqual(events, ["background", "foreground", "online", "offline", "online"]);
  stop();
  assert.equal(removed, 2);
});
