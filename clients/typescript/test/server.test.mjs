// @sluice/client against a real `sluice serve` on loopback (Node's `ws`
// as the WebSocket, the test's self-signed CA passed as `ca`).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { SluiceClient, SluiceError } from "../dist/index.js";
import { startServer, until, PRESENCE_DEBOUNCE_MS, TINY_HISTORY } from "./server.mjs";

let server;
const clients = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

/**
 * A client of tenant `t` as `sub`, minting a fresh token whenever asked.
 * `client.cut()` drops its connection the hard way (the TCP socket
 * destroyed, no close frame); `cut({ hold: true })` also keeps it from
 * reconnecting until `client.release()`, as does `client.hold()` alone.
 */
function connect(sub, { tenant = "t", scopes, ttl, claims, ...options } = {}) {
  const tokens = [];
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new SluiceClient({
    url: server.url(tenant),
    WebSocket: Tracked,
    webSocketOptions: { ca: server.ca },
    getToken: async () => {
      await client.held;
      const t = await server.token(sub, { scopes, ttl, tenant, claims });
      tokens.push(t);
      return t;
    },
    backoff: { initialDelayMs: 100, maxDelayMs: 1000 },
    ...options,
  });
  client.tokens = tokens;
  client.hold = () => {
    client.held = new Promise((resolve) => {
      client.release = () => {
        client.held = undefined;
        resolve();
      };
    });
  };
  client.cut = ({ hold = false } = {}) => {
    if (hold) client.hold();
    sockets.at(-1).terminate();
  };
  clients.push(client);
  return client;
}

/** Collects a subscription's events. */
function collect(sub) {
  const got = [];
  sub.on("event", (e) => got.push(e.data));
  return got;
}
const texts = (events) => events.filter((d) => d.kind === "message").map((d) => d.text);

test("echo with the token in the Authorization header and in the subprotocol", async () => {
  for (const tokenIn of ["header", "subprotocol"]) {
    const c = connect("alice", { tokenIn });
    const welcome = await c.connect();
    assert.equal(welcome.subject, "alice");
    assert.ok(welcome.expiresAt > Date.now() / 1000 + 3000);
    assert.deepEqual(await c.request("echo", { hello: tokenIn }), { hello: tokenIn });
    c.close();
  }
});

test("typed errors: every code a client can cause, with code, message and retryAfterMs", async () => {
  const c = connect("bob");
  await c.connect();
  const refused = async (promise, code, message) => {
    const e = await promise.then(
      (v) => assert.fail(`expected ${code}, got ${JSON.stringify(v)}`),
      (x) => x,
    );
    assert.ok(e instanceof SluiceError, String(e));
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return e;
  };
  await refused(c.request("no.such.route", {}), "unknown_type", /no such message type/);
  await refused(c.request("echo", {}, { channel: "room:1" }), "bad_envelope", /takes no channel/);
  await refused(c.request("chat.send", { text: "x" }), "bad_envelope", /needs a channel/);
  let deep = 1;
  for (let i = 0; i < 40; i++) deep = [deep];
  await refused(c.request("echo", deep), "too_deep", /deeper than 32/);
  await refused(c.request("chat.send", { text: "x" }, { channel: "room 1" }), "invalid_channel");
  await refused(c.request("admin.echo", {}), "forbidden", /missing scope/);
  await refused(c.request("chat.send", { text: "x" }, { channel: "user:someone-else" }), "forbidden", /not allowed/);
  await refused(c.request("chat.send", { text: "" }, { channel: "room:1" }), "schema_invalid", /\/text.*minLength/);
  await refused(c.request("chat.send", { text: "x", extra: 1 }, { channel: "room:1" }), "schema_invalid", /additionalProperties/);
  await refused(c.request("refresh", { token: "not-a-jwt" }), "invalid_token");
  // A malformed `since` (the client only ever sends positions the server gave it).
  for (const since of [{ offset: -1, epoch: "e" }, { offset: 1.5, epoch: "e" }, { offset: 2 ** 53, epoch: "e" }, { offset: 1, epoch: "x".repeat(65) }, { offset: 1, epoch: "e", extra: 1 }]) {
    await refused(c.request("subscribe", { since }, { channel: "feed:bad" }), "bad_envelope");
  }
  const other = await server.token("mallory");
  await refused(c.request("refresh", { token: other }), "forbidden", /same subject/);
  const sub = c.subscribe("user:someone-else");
  await refused(sub.ready, "forbidden");

  // A handler that fails, twice (quarantine_after = 2), then is quarantined.
  await refused(c.request("misbehave", { mode: "spin" }), "handler_timeout");
  await refused(c.request("misbehave", { mode: "panic" }), "handler_failed");
  const unavailable = await refused(c.request("misbehave", { mode: "ok" }), "unavailable");
  assert.ok(unavailable.retryAfterMs > 0 && unavailable.retryAfterMs <= 3000, String(unavailable.retryAfterMs));

  // 256 subscriptions per connection at most.
  const subs = [];
  for (let i = 0; i < 256; i++) subs.push(c.subscribe(`room:${i}`).ready);
  await Promise.all(subs);
  await refused(c.subscribe("room:256").ready, "too_many_subscriptions");

  // Still usable after all of that.
  assert.deepEqual(await c.request("echo", { still: "here" }), { still: "here" });
  c.close();
});

test("rate_limited carries retryAfterMs, and the client waits that long before sending more", async () => {
  const c = connect("carol", { tenant: "slow" });
  await c.connect();
  // Burst of 2 at 1 msg/s: the third is refused.
  const answers = await Promise.allSettled([1, 2, 3].map((n) => c.request("echo", { n })));
  assert.deepEqual(answers.slice(0, 2).map((a) => a.value), [{ n: 1 }, { n: 2 }]);
  const e = answers[2].reason;
  assert.ok(e instanceof SluiceError);
  assert.equal(e.code, "rate_limited");
  assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 1000, String(e.retryAfterMs));
  // Sent after the hold, so the server accepts it.
  const started = Date.now();
  assert.deepEqual(await c.request("echo", { n: 4 }), { n: 4 });
  assert.ok(Date.now() - started >= e.retryAfterMs - 50, `waited ${Date.now() - started} ms of ${e.retryAfterMs}`);
  c.close();
});

test("after a server restart: reconnects, resubscribes, delivers queued requests", async () => {
  const alice = connect("alice");
  const bob = connect("bob");
  await Promise.all([alice.connect(), bob.connect()]);
  const room = alice.subscribe("room:restart", { type: "chat.join", leave: { type: "chat.leave" } });
  await room.ready;
  const got = collect(room);
  const subscribed = [];
  room.on("subscribed", (s) => subscribed.push(s));
  await bob.request("chat.send", { text: "before" }, { channel: "room:restart" });
  await until(() => texts(got).includes("before"), 5000, "the first message");

  const drops = [];
  alice.on("disconnected", (d) => drops.push(d));
  await server.stop();
  await until(() => drops.length > 0, 5000, "alice to notice");
  assert.equal(drops[0].code, 1001);
  assert.equal(drops[0].reason, "server shutting down");
  assert.equal(alice.state, "reconnecting");
  // Made while the server is down: queued, sent once it is back.
  const queued = alice.request("echo", { queued: true }, { timeoutMs: 20_000 });
  await new Promise((r) => setTimeout(r, 1500));
  await server.start();

  assert.deepEqual(await queued, { queued: true });
  await until(() => subscribed.length === 1 && bob.state === "open", 10_000, "the resubscription");
  assert.equal(subscribed[0].resubscribed, true);
  assert.equal(subscribed[0].recovered, undefined, "no channel history on this server");
  assert.equal(alice.state, "open");
  await bob.request("chat.send", { text: "after" }, { channel: "room:restart" });
  await until(() => texts(got).includes("after"), 5000, "the message after the restart");
  assert.deepEqual(texts(got), ["before", "after"]);
  alice.close();
  bob.close();
});

test("refreshes the token before it expires: the connection stays", async () => {
  const c = connect("dave", { ttl: 4 });
  const welcome = await c.connect();
  const drops = [];
  const refreshed = [];
  c.on("disconnected", (d) => drops.push(d));
  c.on("refreshed", (r) => refreshed.push(r));
  await new Promise((r) => setTimeout(r, 6500));
  assert.deepEqual(drops, [], "never dropped");
  assert.ok(refreshed.length >= 1, "refreshed");
  assert.ok(refreshed.at(-1).expiresAt > welcome.expiresAt);
  assert.equal(c.welcome.connectionId, welcome.connectionId, "the same connection");
  assert.ok(c.tokens.length >= 2);
  assert.deepEqual(await c.request("echo", 1), 1);
  c.close();
});

test("without refresh: closed 1008 token expired, then a new token and a reconnect that keeps the subscription", async () => {
  const erin = connect("erin", { ttl: 3, refreshBeforeExpiry: false });
  const frank = connect("frank");
  const first = await erin.connect();
  await frank.connect();
  const room = erin.subscribe("room:expiry");
  await room.ready;
  const got = collect(room);
  const drops = [];
  erin.on("disconnected", (d) => drops.push(d));
  await until(() => drops.length > 0, 8000, "the expiry");
  assert.equal(drops[0].code, 1008);
  assert.equal(drops[0].reason, "token expired");
  assert.equal(drops[0].delayMs, 0);
  await until(() => erin.state === "open" && room.active, 5000, "the reconnect");
  assert.notEqual(erin.welcome.connectionId, first.connectionId);
  assert.equal(erin.tokens.length, 2);
  await frank.request("chat.send", { text: "still here?" }, { channel: "room:expiry" });
  await until(() => texts(got).includes("still here?"), 5000, "the event");
  erin.close();
  frank.close();
});

test("stops for good and says why: foreign origin (403), unknown tenant (404), tokens refused (401)", async () => {
  const cases = [
    [{ webSocketOptions: { ca: server.ca, origin: "https://evil.example" } }, /403/],
    [{ url: server.url("nope") }, /404/],
  ];
  for (const [options, why] of cases) {
    const c = connect("gina", options);
    const closed = new Promise((r) => c.on("closed", r));
    await assert.rejects(c.connect(), { code: "closed" });
    assert.match((await closed).why, why);
  }
  const bad = new SluiceClient({
    url: server.url(),
    WebSocket,
    webSocketOptions: { ca: server.ca },
    getToken: () => "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
  });
  let attempts = 0;
  bad.on("state", (s) => s === "reconnecting" && attempts++);
  await assert.rejects(bad.connect(), (e) => e.code === "closed" && /401/.test(e.message));
  assert.equal(bad.state, "closed");
});

test("events as an async iterator, in order", async () => {
  const h = connect("hana");
  const i = connect("ivan");
  await Promise.all([h.connect(), i.connect()]);
  const room = h.subscribe("room:iter");
  await room.ready;
  // Iterators see the events from their creation on.
  const all = h.events();
  const mine = room.events();
  for (const text of ["one", "two", "three"]) await i.request("chat.send", { text }, { channel: "room:iter" });
  const got = [];
  for await (const e of mine) {
    got.push(e.data.text);
    if (got.length === 3) break;
  }
  assert.deepEqual(got, ["one", "two", "three"]);
  const first = await all.next();
  assert.equal(first.value.channel, "room:iter");
  assert.equal(first.value.data.text, "one");
  h.close();
  i.close();
});

/** The texts of `chat.send` messages among events. */
const messageTexts = (events) => events.filter((e) => e.data.kind === "message").map((e) => e.data.text);

test("recovery after a dropped connection: every event exactly once, in order, while another client publishes", async (t) => {
  const alice = connect("alice");
  const bob = connect("bob");
  await Promise.all([alice.connect(), bob.connect()]);
  const feed = alice.subscribe("feed:recover");
  const first = await feed.ready;
  assert.equal(typeof first.offset, "number", JSON.stringify(first));
  assert.equal(typeof first.epoch, "string", JSON.stringify(first));
  const got = [];
  const subscribed = [];
  const failed = [];
  const drops = [];
  feed.on("event", (e) => got.push(e));
  feed.on("subscribed", (s) => subscribed.push(s));
  feed.on("recoveryFailed", (f) => failed.push(f));
  alice.on("disconnected", (d) => drops.push(d));

  // Bob publishes 200 events, one after the other, for the whole test.
  const total = 200;
  let acked = 0;
  const publishing = (async () => {
    for (let i = 0; i < total; i++) {
      await bob.request("chat.send", { text: `m${i}` }, { channel: "feed:recover", timeoutMs: 60_000 });
      acked++;
    }
  })();
  // Alice's TCP connection dies after a few events and stays down while
  // at least 40 more are published; then she reconnects while Bob goes on.
  await until(() => got.length >= 20, 60_000, "the first events");
  alice.cut({ hold: true });
  await until(() => drops.length === 1, 10_000, "alice to notice the drop");
  assert.equal(drops[0].code, 1006);
  const lastBefore = got.at(-1).offset;
  const cutAt = acked;
  await until(() => acked >= Math.min(total, cutAt + 40), 60_000, "events published while alice is away");
  alice.release();
  t.diagnostic(`cut after ${got.length} events delivered, ${cutAt} published; reconnecting with ${acked} published`);
  await publishing;
  await bob.request("chat.send", { text: "end" }, { channel: "feed:recover" });
  await until(() => messageTexts(got).includes("end"), 30_000, "every event");

  const expected = Array.from({ length: total }, (_, i) => `m${i}`);
  assert.deepEqual(messageTexts(got), [...expected, "end"], "no gap, no duplicate");
  for (let i = 1; i < got.length; i++) assert.ok(got[i].offset > got[i - 1].offset, `offsets increase at ${i}`);
  assert.equal(new Set(got.map((e) => e.epoch)).size, 1);
  assert.equal(subscribed.length, 1);
  assert.equal(subscribed[0].resubscribed, true);
  assert.equal(subscribed[0].recovered, true);
  assert.equal(subscribed[0].data.recovered, true);
  assert.ok(subscribed[0].data.offset - lastBefore >= 40, "the ack's offset is past what was missed");
  assert.deepEqual(failed, []);
  assert.deepEqual(feed.lastPosition, { offset: got.at(-1).offset, epoch: got.at(-1).epoch });
  alice.close();
  bob.close();
});

test("recovery fails past the history window: recoveryFailed with since and current, then live events", async () => {
  const alice = connect("alice");
  const bob = connect("bob");
  await Promise.all([alice.connect(), bob.connect()]);
  const tiny = alice.subscribe("tiny:window");
  await tiny.ready;
  const got = [];
  const subscribed = [];
  const failed = [];
  const clientFailed = [];
  tiny.on("event", (e) => got.push(e));
  tiny.on("subscribed", (s) => subscribed.push(s));
  tiny.on("recoveryFailed", (f) => failed.push(f));
  alice.on("recoveryFailed", (f) => clientFailed.push(f));
  await bob.request("chat.send", { text: "seen" }, { channel: "tiny:window" });
  await until(() => got.length === 1, 10_000, "the first event");
  const seen = { offset: got[0].offset, epoch: got[0].epoch };

  alice.cut({ hold: true });
  await until(() => alice.state === "reconnecting", 10_000, "alice to notice the drop");
  // More than the channel keeps: the window has passed.
  const missed = TINY_HISTORY * 2;
  for (let i = 0; i < missed; i++) await bob.request("chat.send", { text: `missed ${i}` }, { channel: "tiny:window" });
  alice.release();
  await until(() => failed.length === 1, 20_000, "recoveryFailed");

  assert.deepEqual(failed[0].since, seen);
  assert.equal(failed[0].channel, "tiny:window");
  assert.equal(failed[0].current.epoch, seen.epoch);
  assert.ok(failed[0].current.offset >= seen.offset + missed, JSON.stringify(failed[0]));
  assert.deepEqual(clientFailed, failed);
  await until(() => subscribed.length === 1, 10_000, "the resubscription");
  assert.equal(subscribed[0].recovered, false);
  assert.deepEqual(tiny.lastPosition, failed[0].current);

  // Nothing missed is delivered; live events resume from the current position.
  await bob.request("chat.send", { text: "live" }, { channel: "tiny:window" });
  await until(() => messageTexts(got).includes("live"), 10_000, "the live event");
  assert.deepEqual(messageTexts(got), ["seen", "live"]);
  assert.ok(got[1].offset > failed[0].current.offset);
  alice.close();
  bob.close();
});

test("presence: members with their exposed claims, join and leave events, a quick reconnect is neither", async () => {
  const alice = connect("pres-alice", { claims: { name: "Alice", secret: "not exposed" } });
  const bob = connect("pres-bob", { claims: { name: "Bob" } });
  await Promise.all([alice.connect(), bob.connect()]);
  const changes = [];
  const room = bob.subscribe("feed:presence");
  room.on("join", (j) => changes.push(["join", j.subject, j.claims]));
  room.on("leave", (l) => changes.push(["leave", l.subject, l.claims]));
  await room.ready;
  await until(() => changes.length === 1, 10_000, "bob's own join");
  assert.deepEqual(changes, [["join", "pres-bob", { name: "Bob" }]]);

  const aliceRoom = alice.subscribe("feed:presence");
  const resubscribed = [];
  aliceRoom.on("subscribed", (s) => s.resubscribed && resubscribed.push(s));
  await aliceRoom.ready;
  await until(() => changes.length === 2, 10_000, "alice's join");
  assert.deepEqual(changes[1], ["join", "pres-alice", { name: "Alice" }]);
  const bySubject = (p) => [...p.members].sort((a, b) => a.subject.localeCompare(b.subject));
  const present = await room.presence();
  assert.equal(present.truncated, false);
  assert.deepEqual(bySubject(present), [
    { subject: "pres-alice", connections: 1, claims: { name: "Alice" } },
    { subject: "pres-bob", connections: 1, claims: { name: "Bob" } },
  ]);

  // Alice's connection dies and comes back within presence_debounce_ms:
  // Bob sees neither a leave nor a join.
  const cutAt = Date.now();
  alice.cut();
  await until(() => resubscribed.length === 1, 10_000, "alice's resubscription");
  const away = Date.now() - cutAt;
  assert.ok(away < PRESENCE_DEBOUNCE_MS, `the reconnect took ${away} ms, longer than the debounce`);
  await new Promise((r) => setTimeout(r, PRESENCE_DEBOUNCE_MS + 1000 - away));
  assert.equal(changes.length, 2, `no leave or join: ${JSON.stringify(changes.slice(2))}`);
  assert.equal(bySubject(await aliceRoom.presence())[0].connections, 1);

  // Alice goes for good: a leave after the debounce.
  const closedAt = Date.now();
  alice.close();
  await until(() => changes.length === 3, PRESENCE_DEBOUNCE_MS + 15_000, "alice's leave");
  assert.equal(changes[2][0], "leave");
  assert.equal(changes[2][1], "pres-alice");
  assert.ok(Date.now() - closedAt >= PRESENCE_DEBOUNCE_MS - 50, `left after ${Date.now() - closedAt} ms`);
  assert.deepEqual(bySubject(await room.presence()), [{ subject: "pres-bob", connections: 1, claims: { name: "Bob" } }]);

  // A channel whose rule has no presence.
  const tiny = bob.subscribe("tiny:presence");
  await tiny.ready;
  await assert.rejects(tiny.presence(), (e) => e instanceof SluiceError && e.code === "forbidden");
  bob.close();
});

test("recovery across a server restart: the history is durable, the epoch the same", async () => {
  const alice = connect("alice");
  const bob = connect("bob");
  await Promise.all([alice.connect(), bob.connect()]);
  const feed = alice.subscribe("feed:restart");
  await feed.ready;
  const got = [];
  const subscribed = [];
  feed.on("event", (e) => got.push(e));
  feed.on("subscribed", (s) => subscribed.push(s));
  await bob.request("chat.send", { text: "before" }, { channel: "feed:restart" });
  await until(() => got.length === 1, 10_000, "the first event");

  // Alice stays away after the restart while Bob publishes.
  alice.hold();
  await server.stop();
  await server.start();
  for (let i = 0; i < 5; i++) await bob.request("chat.send", { text: `after ${i}` }, { channel: "feed:restart", timeoutMs: 30_000 });
  alice.release();
  await until(() => subscribed.length === 1, 20_000, "alice's resubscription");
  await until(() => got.length >= 6, 10_000, "the missed events");
  assert.equal(subscribed[0].recovered, true);
  assert.deepEqual(messageTexts(got), ["before", "after 0", "after 1", "after 2", "after 3", "after 4"]);
  assert.equal(new Set(got.map((e) => e.epoch)).size, 1);
  alice.close();
  bob.close();
});

test("the server takes keys: a keyed request is answered once, a retry gets the answer, a reuse is refused; the client sends keys", async () => {
  const token = await server.token("raw-keys");
  const ws = new WebSocket(server.url(), ["sluice.v1"], { ca: server.ca, headers: { Authorization: `Bearer ${token}` } });
  const frames = [];
  ws.on("message", (m) => frames.push(JSON.parse(String(m))));
  await until(() => frames.length === 1, 10_000, "welcome");
  assert.equal(frames[0].type, "welcome");
  assert.deepEqual(frames[0].data.idempotency, { window_secs: 300 }, "this server advertises keys");
  ws.send(JSON.stringify({ type: "echo", id: "k1", key: "order:1", data: { n: 1 } }));
  await until(() => frames.length === 2, 10_000, "the answer");
  assert.deepEqual(frames[1], { type: "ack", id: "k1", data: { n: 1 } });
  // The retry: the first answer under its own id.
  ws.send(JSON.stringify({ type: "echo", id: "k2", key: "order:1", data: { n: 1 } }));
  await until(() => frames.length === 3, 10_000, "the replay");
  assert.deepEqual(frames[2], { type: "ack", id: "k2", data: { n: 1 } });
  // The key with other data: refused, nothing run.
  ws.send(JSON.stringify({ type: "echo", id: "k3", key: "order:1", data: { n: 2 } }));
  await until(() => frames.length === 4, 10_000, "the refusal");
  assert.equal(frames[3].type, "error");
  assert.equal(frames[3].code, "key_reused");
  assert.equal(frames[3].id, "k3");
  // The connection stays usable.
  ws.send(JSON.stringify({ type: "echo", id: "k4", data: { n: 3 } }));
  await until(() => frames.length === 5, 10_000, "the echo");
  assert.deepEqual(frames[4], { type: "ack", id: "k4", data: { n: 3 } });
  ws.close();

  // The client: its requests carry keys to this server.
  const c = connect("keys-client");
  const welcome = await c.connect();
  assert.equal(welcome.idempotencyWindowSecs, 300);
  assert.deepEqual(await c.request("echo", { n: 2 }, { key: "order:2" }), { n: 2 });
  c.close();
});
