// The hooks under React's test renderer against a scripted WebSocket: the
// idempotent retry of useRequest (a server that takes keys, played by the
// test until the server has them), the shared subscription of useChannel
// and usePresence, and the connection state of useSluice.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import { SluiceClient } from "@sluice/client";
import { SluiceProvider, useChannel, usePresence, useRequest, useSluice } from "../dist/index.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;

/** A server that takes keys: answers a key it has seen with its first answer. */
class FakeSocket {
  static all = [];
  static answers = new Map();
  static calls = 0;
  constructor() {
    this.sent = [];
    FakeSocket.all.push(this);
    setTimeout(() => this.frame({ type: "welcome", data: { connection_id: FakeSocket.all.length, subject: "alice", expires_at: Math.floor(Date.now() / 1000) + 3600, idempotency: { window_secs: 300 } } }), 0);
  }
  send(text) {
    const f = JSON.parse(text);
    this.sent.push(f);
    if (this.hold) return;
    this.answer(f);
  }
  answer(f) {
    if (f.type === "subscribe" || f.type === "unsubscribe") return this.frame({ type: "ack", id: f.id, data: { offset: 0, epoch: "e" } });
    if (f.type === "presence") return this.frame({ type: "ack", id: f.id, data: { members: [{ subject: "alice", connections: 1, claims: {} }], truncated: false } });
    if (f.data?.fail) return this.frame({ type: "error", id: f.id, code: "empty_text", message: "say something" });
    this.frame({ type: "ack", id: f.id, data: FakeSocket.apply(f) });
  }
  /** Run the call (once per key) and keep its answer. */
  static apply(f) {
    if (!FakeSocket.answers.has(f.key)) FakeSocket.answers.set(f.key, { seq: ++FakeSocket.calls });
    return FakeSocket.answers.get(f.key);
  }
  close() {}
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  cut() {
    this.onclose?.({ code: 1006, reason: "" });
  }
}
const latest = () => FakeSocket.all.at(-1);
const tick = (ms = 10) => act(() => new Promise((r) => setTimeout(r, ms)));
/** Let React render until `predicate()` holds (a loaded machine may be slow). */
async function until(predicate, what) {
  const deadline = Date.now() + 10_000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick();
  }
}

beforeEach(() => {
  FakeSocket.all = [];
  FakeSocket.answers = new Map();
  FakeSocket.calls = 0;
});

function makeClient(extra = {}) {
  return new SluiceClient({
    url: "wss://example.test/ws/t",
    getToken: () => "token",
    WebSocket: FakeSocket,
    lifecycle: null,
    heartbeatIntervalMs: 0,
    backoff: { initialDelayMs: 1, maxDelayMs: 1 },
    ...extra,
  });
}

/** Render `hook` inside a provider; `seen()` is its latest value. */
async function render(client, hook) {
  let value;
  function Probe() {
    value = hook();
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(createElement(SluiceProvider, { client }, createElement(Probe)));
  });
  return { seen: () => value, renderer };
}

test("useSluice follows the connection", async () => {
  const client = makeClient();
  const { seen, renderer } = await render(client, useSluice);
  await until(() => seen().state === "open", "open");
  assert.equal(seen().welcome.subject, "alice");
  await act(async () => latest().cut());
  assert.equal(seen().state, "reconnecting");
  await until(() => seen().state === "open", "open again");
  client.close();
  await until(() => seen().state === "closed", "closed");
  renderer.unmount();
});

test("useRequest: pending, then ack; a drop before the ack resends with the key and the first answer comes back once", async () => {
  const client = makeClient();
  const { seen, renderer } = await render(client, () => useRequest("chat.send", { channel: "room:1" }));
  await until(() => client.state === "open", "open");
  let p;
  await act(async () => {
    p = seen().send({ text: "hi" });
  });
  assert.equal(seen().status, "ack");
  assert.deepEqual(seen().data, { seq: 1 });
  assert.deepEqual(await p, { seq: 1 });

  // The tunnel: the server runs the call, the ack never arrives.
  latest().hold = true;
  await act(async () => {
    p = seen().send({ text: "in the tunnel" });
  });
  const key = seen().key;
  const first = latest().sent.at(-1);
  assert.equal(first.key, key);
  FakeSocket.apply(first); // applied on the server, its ack lost with the connection
  assert.equal(seen().status, "pending");
  await act(async () => latest().cut());
  await until(() => seen().status === "ack", "the resend's answer");
  // Resent after the reconnect with the same key: answered with the first call's outcome.
  assert.equal(latest().sent.at(-1).key, key);
  assert.equal(seen().status, "ack");
  assert.deepEqual(seen().data, { seq: 2 });
  assert.equal(FakeSocket.calls, 2, "applied once");

  // retry() sends the last request again with its key: no second effect.
  await act(async () => {
    await seen().retry();
  });
  assert.deepEqual(seen().data, { seq: 2 });
  assert.equal(FakeSocket.calls, 2);

  // An error shows as such.
  await act(async () => {
    await seen().send({ fail: true }).catch(() => undefined);
  });
  assert.equal(seen().status, "error");
  assert.equal(seen().error.code, "empty_text");
  client.close();
  renderer.unmount();
});

test("useChannel and usePresence share one subscription, and release it when the last unmounts", async () => {
  const client = makeClient();
  let channel;
  let presence;
  function Room() {
    channel = useChannel("feed:1", { limit: 2 });
    presence = usePresence("feed:1");
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(createElement(SluiceProvider, { client }, createElement(Room)));
  });
  await until(() => channel.active && presence.members.length === 1, "subscribed");
  const subscribes = latest().sent.filter((f) => f.type === "subscribe");
  assert.equal(subscribes.length, 1, "one subscription for both hooks");
  assert.equal(channel.active, true);
  assert.deepEqual(presence.members.map((m) => m.subject), ["alice"]);
  await act(async () => {
    for (const n of [1, 2, 3]) latest().frame({ type: "event", channel: "feed:1", data: { n }, offset: n, epoch: "e" });
    latest().frame({ type: "join", channel: "feed:1", data: { subject: "bob", claims: { name: "Bob" } } });
  });
  assert.deepEqual(channel.events.map((e) => e.data.n), [2, 3], "the last `limit` events");
  assert.deepEqual(presence.members.map((m) => m.subject), ["alice", "bob"]);
  await act(async () => latest().frame({ type: "leave", channel: "feed:1", data: { subject: "bob" } }));
  assert.deepEqual(presence.members.map((m) => m.subject), ["alice"]);

  // A drop: resubscribed with since, and the recovery state shows.
  await act(async () => latest().cut());
  assert.equal(channel.active, false, "not active while disconnected");
  await until(() => FakeSocket.all.length === 2 && latest().sent.some((f) => f.type === "subscribe"), "the resubscription");
  await until(() => channel.active, "active again");
  const resub = latest().sent.find((f) => f.type === "subscribe");
  assert.deepEqual(resub.data, { since: { offset: 3, epoch: "e" } });
  assert.equal(channel.active, true);

  await act(async () => renderer.unmount());
  assert.ok(latest().sent.some((f) => f.type === "unsubscribe" && f.channel === "feed:1"), "released");
  client.close();
});
