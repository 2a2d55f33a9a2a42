// The hooks under React's test renderer against a real `sluice serve`
// (the TypeScript client's test server: tenant `t`, `feed:{id}` keeps
// history and presence). The server takes idempotency keys, so every
// request the hooks make carries one; useRequest's retry after a cut is in
// fake.test.mjs (and the client's own tunnel.test.mjs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import WebSocket from "ws";
import { SluiceClient } from "@sluice/client";
import { SluiceProvider, useChannel, usePresence, useRequest, useSluice } from "../dist/index.js";
import { startServer, until, PRESENCE_DEBOUNCE_MS } from "../../typescript/test/server.mjs";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;

let server;
const clients = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  // A failed assertion leaves its clients open: close them, or their
  // reconnect timers keep the file running until its timeout.
  for (const c of clients) c.close();
  await server?.close();
});

/**
 * A client as `sub` with `claims`. `client.cut()` destroys its socket (no
 * close frame) and holds its reconnect until `client.release()`: the
 * backoff's full jitter can reconnect in a few ms, faster than a render
 * can show the drop.
 */
function connect(sub, claims) {
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new SluiceClient({
    url: server.url(),
    WebSocket: Tracked,
    webSocketOptions: { ca: server.ca },
    getToken: async () => {
      await client.held;
      return server.token(sub, { claims });
    },
    backoff: { initialDelayMs: 100, maxDelayMs: 500 },
    lifecycle: null,
  });
  client.cut = () => {
    client.held = new Promise((resolve) => {
      client.release = () => {
        client.held = undefined;
        resolve();
      };
    });
    sockets.at(-1).terminate();
  };
  clients.push(client);
  return client;
}

/** Wait, letting React render, until `predicate()` holds. */
const settled = (predicate, what) =>
  until(async () => {
    await act(() => new Promise((r) => setTimeout(r, 20)));
    return predicate();
  }, 20_000, what);

test("a room: useChannel, usePresence, useRequest and useSluice against a real server", async () => {
  const alice = connect("react-alice", { name: "Alice" });
  const bob = connect("react-bob", { name: "Bob" });
  let view;
  function Room() {
    const { state, welcome } = useSluice();
    const room = useChannel("feed:react");
    const { members } = usePresence("feed:react");
    const send = useRequest("chat.send", { channel: "feed:react" });
    view = {
      state,
      welcome,
      texts: room.events.filter((e) => e.data.kind === "message").map((e) => e.data.text),
      active: room.active,
      recovered: room.recovered,
      members: members.map((m) => `${m.subject}:${m.claims.name}`).sort(),
      send,
    };
    return createElement("ul", null, view.texts.map((t, i) => createElement("li", { key: i }, t)));
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(createElement(SluiceProvider, { client: alice }, createElement(Room)));
  });
  await settled(() => view.state === "open" && view.active, "alice in the room");
  assert.equal(view.welcome.idempotencyWindowSecs, 300, "the server takes keys");

  await bob.connect();
  const bobRoom = bob.subscribe("feed:react");
  await bobRoom.ready;
  await settled(() => view.members.length === 2, "bob's join");
  assert.deepEqual(view.members, ["react-alice:Alice", "react-bob:Bob"]);

  // Alice sends through useRequest: pending, then the ack with the handler's seq.
  let sent;
  await act(async () => {
    sent = view.send.send({ text: "hello from alice" });
  });
  await settled(() => view.send.status === "ack", "alice's ack");
  assert.equal(typeof view.send.data.seq, "number");
  assert.equal(typeof view.send.key, "string", "the request went with a key");
  assert.deepEqual(await sent, view.send.data);
  await bob.request("chat.send", { text: "hi alice" }, { channel: "feed:react" });
  await settled(() => view.texts.length === 2, "both messages");
  assert.deepEqual(view.texts, ["hello from alice", "hi alice"]);
  assert.deepEqual(renderer.toJSON().children.map((li) => li.children[0]), ["hello from alice", "hi alice"]);

  // Alice's connection dies; bob talks meanwhile; she recovers every message once.
  alice.cut();
  await settled(() => view.state !== "open", "alice's drop");
  for (const text of ["missed 1", "missed 2"]) await bob.request("chat.send", { text }, { channel: "feed:react" });
  alice.release();
  await settled(() => view.state === "open" && view.texts.length === 4, "the recovery");
  assert.deepEqual(view.texts, ["hello from alice", "hi alice", "missed 1", "missed 2"]);
  assert.equal(view.recovered, true);

  // Bob leaves: gone from the members after the debounce.
  bob.close();
  await until(async () => {
    await act(() => new Promise((r) => setTimeout(r, 50)));
    return view.members.length === 1;
  }, PRESENCE_DEBOUNCE_MS + 15_000, "bob's leave");
  assert.deepEqual(view.members, ["react-alice:Alice"]);

  await act(async () => renderer.unmount());
  alice.close();
});
