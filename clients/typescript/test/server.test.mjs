// @sluice/client against a real `sluice serve` on loopback (Node's `ws`
// as the WebSocket, the test's self-signed CA passed as `ca`).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { SluiceClient, SluiceError } from "../dist/index.js";
import { startServer, until } from "./server.mjs";

let server;
const clients = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

/** A client of tenant `t` as `sub`, minting a fresh token whenever asked. */
function connect(sub, { tenant = "t", scopes, ttl, ...options } = {}) {
  const tokens = [];
  const client = new SluiceClient({
    url: server.url(tenant),
    WebSocket,
    webSocketOptions: { ca: server.ca },
    getToken: async () => {
      const t = await server.token(sub, { scopes, ttl, tenant });
      tokens.push(t);
      return t;
    },
    backoff: { initialDelayMs: 100, maxDelayMs: 1000 },
    ...options,
  });
  client.tokens = tokens;
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
