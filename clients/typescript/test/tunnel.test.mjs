// The train enters a tunnel: the TCP connection is cut (no close frame)
// right after a `chat.send` reached a real `sluice serve` and before its
// ack reached the client. A proxy in the test forwards the bytes both ways
// and, when armed, lets the client's request through, swallows what the
// server answers, and destroys both sockets. The client reconnects,
// resends with the request's key, and the room gets the message once;
// `request()` resolves with the first call's `seq`. The same with the
// server killed (SIGKILL) after it answered and restarted on its durable
// store. And in a fleet (two nodes on a real nats-server with JetStream):
// the cut after `chat.send` reached node 1, then the proxy's upstream
// switched to node 2 as a load balancer would, so the reconnect and the
// resend land there; node 2 answers with node 1's outcome (the JetStream KV
// of outcomes) and a watcher on node 2 sees the message once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect as tcpConnect } from "node:net";
import WebSocket from "ws";
import { SluiceClient } from "../dist/index.js";
import { startServer, startFleet, until } from "./server.mjs";

let server;
let fleet;
const clients = [];
const proxies = [];
before(async () => {
  server = await startServer();
  fleet = await startFleet(2);
});
after(async () => {
  for (const c of clients) c.close();
  for (const p of proxies) p.close();
  await server?.close();
  await fleet?.close();
});

/**
 * A TCP proxy to `port` (the server's by default). `cutAtNextAnswer(onAnswer)`:
 * the next frame the client writes that is bigger than a ping (a request)
 * is forwarded; the first bytes the server sends after it are swallowed,
 * `onAnswer()` runs, and both sockets are destroyed. `retarget(port)`: new
 * connections go to `port` (a load balancer's choice); `upstreams` lists
 * the port of each connection made.
 */
async function startProxy(port = server.port) {
  let armed = null;
  let upstream = port;
  const upstreams = [];
  const pairs = new Set();
  const proxy = createServer((down) => {
    upstreams.push(upstream);
    const up = tcpConnect(upstream, "127.0.0.1");
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
    upstreams,
    retarget(port) {
      upstream = port;
    },
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

/** A client of `sub` at `url`, trusting `of` (the server or the fleet) and with its tokens. */
function client(sub, url, of = server) {
  const c = new SluiceClient({
    url,
    WebSocket,
    webSocketOptions: { ca: of.ca },
    getToken: () => of.token(sub),
    backoff: { initialDelayMs: 100, maxDelayMs: 500 },
  });
  clients.push(c);
  return c;
}

/** Tenant `t`'s series `name` in the /metrics of the node whose admin listener is on `port`. */
async function metric(port, name) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes('tenant="t"'));
  assert.ok(line, `${name} for tenant t in /metrics:\n${text.slice(0, 2000)}`);
  return Number(line.split(" ").pop());
}

/** The texts of the room's messages as the chat handler keeps them (asked of `node`, the server by default). */
async function roomTexts(room, node = server, of = server) {
  const reader = client("reader-" + Math.random().toString(36).slice(2), node.url(), of);
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

test("a tunnel after chat.send reached fleet node 1, the reconnect lands on node 2: node 2 answers the resend with node 1's seq, posted once", async () => {
  const [node1, node2] = fleet.nodes;
  const room = "room:fleet-tunnel";
  const watcher = client("fleet-watcher", node2.url(), fleet);
  await watcher.connect();
  const events = [];
  const subscription = watcher.subscribe(room);
  subscription.on("event", (e) => events.push(e.data));
  await until(() => subscription.active, 30_000, "the watcher's subscription on node 2");

  const proxy = await startProxy(node1.port);
  const phone = client("fleet-phone", proxy.url(), fleet);
  const welcome = await phone.connect();
  assert.equal(welcome.idempotencyWindowSecs, 300, "node 1 takes keys");
  const hitsBefore = await metric(node2.admin, "sluice_idempotency_hits_total");
  const cut = proxy.cutAtNextAnswer(() => proxy.retarget(node2.port));
  const sent = phone.request("chat.send", { text: "through the tunnel" }, { channel: room });
  const swallowed = await cut;
  assert.ok(swallowed > 0, "node 1 answered; the client never saw it");
  assert.deepEqual(await sent, { seq: 1 }, "node 1's seq, from node 2, after the resend");
  const [first, ...reconnects] = proxy.upstreams;
  assert.equal(first, node1.port, "the first connection to node 1");
  assert.ok(reconnects.length >= 1 && reconnects.every((p) => p === node2.port), "the reconnect to node 2");
  // Counted before node 2 answers; polled in case /metrics lags.
  const hits = () => metric(node2.admin, "sluice_idempotency_hits_total");
  await until(async () => (await hits()) > hitsBefore, 30_000, "node 2 answering the resend from the stored outcome (its idempotency hits)");
  const next = await phone.request("chat.send", { text: "after" }, { channel: room });
  assert.deepEqual(next, { seq: 2 }, "the resend ran nothing");
  await until(() => events.filter((d) => d.kind === "message").length >= 2, 30_000, "the watcher's events");
  const messages = events.filter((d) => d.kind === "message").map((d) => d.text);
  assert.deepEqual(messages, ["through the tunnel", "after"], "the room got the message once");
  assert.deepEqual(await roomTexts(room, node1, fleet), ["through the tunnel", "after"], "node 1's view of the room");
  assert.deepEqual(await roomTexts(room, node2, fleet), ["through the tunnel", "after"], "node 2's view of the room");
});
