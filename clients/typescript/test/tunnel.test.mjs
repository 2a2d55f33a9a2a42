// The train enters a tunnel: the TCP connection is cut (no close frame)
// right after a `chat.send` reached a real `sluice serve` and before its
// ack reached the client. A proxy in the test forwards the bytes both ways
// and, when armed, lets the client's request through, swallows what the
// server answers, and destroys both sockets. The client reconnects,
// resends with the request's key, and the room gets the message once;
// `request()` resolves with the first call's `seq`. The same with the
// server killed (SIGKILL) after it answered and restarted on its durable
// store.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect as tcpConnect } from "node:net";
import WebSocket from "ws";
import { SluiceClient } from "../dist/index.js";
import { startServer, until } from "./server.mjs";

let server;
const clients = [];
const proxies = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  for (const p of proxies) p.close();
  await server?.close();
});

/**
 * A TCP proxy to the server's port. `cutAtNextAnswer(onAnswer)`: the next
 * frame the client writes that is bigger than a ping (a request) is
 * forwarded; the first bytes the server sends after it are swallowed,
 * `onAnswer()` runs, and both sockets are destroyed.
 */
async function startProxy() {
  let armed = null;
  const pairs = new Set();
  const proxy = createServer((down) => {
    const up = tcpConnect(server.port, "127.0.0.1");
    const pair = { up, down, requestSent: false };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      up.destroy();
      down.destroy();
    };
    down.on("data", (chunk) => {
      if (armed && chunk.length > 100) pair.requestSent = true;
      up.write(chunk);
    });
    up.on("data", (chunk) => {
      if (armed && pair.requestSent) {
        const onAnswer = armed;
        armed = null;
        pair.requestSent = false;
        end();
        onAnswer(chunk.length);
        return;
      }
      down.write(chunk);
    });
    up.on("error", end);
    down.on("error", end);
    up.on("close", end);
    down.on("close", end);
  });
  await new Promise((res) => proxy.listen(0, "127.0.0.1", res));
  const p = {
    url: (tenant = "t") => `wss://127.0.0.1:${proxy.address().port}/ws/${tenant}`,
    cutAtNextAnswer(onAnswer = () => {}) {
      return new Promise((res) => {
        armed = (n) => {
          onAnswer();
          res(n);
        };
      });
    },
    close() {
      for (const { up, down } of pairs) {
        up.destroy();
        down.destroy();
      }
      proxy.close();
    },
  };
  proxies.push(p);
  return p;
}

function client(sub, url) {
  const c = new SluiceClient({
    url,
    WebSocket,
    webSocketOptions: { ca: server.ca },
    getToken: () => server.token(sub),
    backoff: { initialDelayMs: 100, maxDelayMs: 500 },
  });
  clients.push(c);
  return c;
}

/** The texts of the room's messages as the chat handler keeps them. */
async function roomTexts(room) {
  const reader = client("reader-" + Math.random().toString(36).slice(2), server.url());
  await reader.connect();
  const joined = await reader.request("chat.join", undefined, { channel: room });
  reader.close();
  return joined.history.map((l) => l.text);
}

test("a tunnel after chat.send reached the server: resent once reconnected, posted once, resolved with the first seq", async () => {
  const proxy = await startProxy();
  const watcher = client("watcher", server.url());
  await watcher.connect();
  const events = [];
  const subscription = watcher.subscribe("room:tunnel");
  subscription.on("event", (e) => events.push(e.data));
  await until(() => subscription.active, 10_000, "the watcher's subscription");

  const phone = client("phone", proxy.url());
  const welcome = await phone.connect();
  assert.equal(welcome.idempotencyWindowSecs, 300, "the server takes keys");
  const cut = proxy.cutAtNextAnswer();
  const sent = phone.request("chat.send", { text: "through the tunnel" }, { channel: "room:tunnel" });
  const swallowed = await cut;
  assert.ok(swallowed > 0, "the server answered; the client never saw it");
  assert.deepEqual(await sent, { seq: 1 }, "the first call's seq, after the resend");
  const next = await phone.request("chat.send", { text: "after" }, { channel: "room:tunnel" });
  assert.deepEqual(next, { seq: 2 }, "the resend ran nothing");
  await until(() => events.filter((d) => d.kind === "message").length >= 2, 10_000, "the watcher's events");
  const messages = events.filter((d) => d.kind === "message").map((d) => d.text);
  assert.deepEqual(messages, ["through the tunnel", "after"], "the room got the message once");
  assert.deepEqual(await roomTexts("room:tunnel"), ["through the tunnel", "after"]);
});

test("kill -9 of the durable server after the effect, before the ack reached the client: the retry after the restart gets the first answer", async () => {
  const proxy = await startProxy();
  const phone = client("phone2", proxy.url());
  await phone.connect();
  const restarted = proxy.cutAtNextAnswer(() => server.child.kill("SIGKILL"));
  const sent = phone.request("chat.send", { text: "before the crash" }, { channel: "room:crash" });
  await restarted;
  await until(() => server.child.exitCode !== null || server.child.signalCode !== null, 10_000, "the server's death");
  server.child = undefined;
  await server.start();
  assert.deepEqual(await sent, { seq: 1 }, "the answer kept on disk with the effect");
  assert.deepEqual(await roomTexts("room:crash"), ["before the crash"], "posted once");
  const next = await phone.request("chat.send", { text: "after" }, { channel: "room:crash" });
  assert.deepEqual(next, { seq: 2 });
});

test("a key reused with other data is refused with key_reused, and the next honest request is served", async () => {
  const c = client("reuser", server.url());
  await c.connect();
  assert.deepEqual(await c.request("chat.send", { text: "one" }, { channel: "room:reuse", key: "draft.42" }), { seq: 1 });
  await assert.rejects(
    c.request("chat.send", { text: "two" }, { channel: "room:reuse", key: "draft.42" }),
    (e) => e.code === "key_reused",
  );
  assert.deepEqual(await c.request("chat.send", { text: "two" }, { channel: "room:reuse" }), { seq: 2 });
});
