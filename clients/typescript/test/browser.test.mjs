// The chat demo page of `sluice dev` in real Chromium (Debian's, driven by
// playwright-core): two pages chat in a room; one goes offline for 5 s
// while the other sends 20 messages, and after it reconnects it shows every
// message once, in order. Screenshots go to test-output/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { SLUICE } from "./server.mjs";

const output = join(dirname(fileURLToPath(import.meta.url)), "../test-output");
let dev;
let devLog = "";
let browser;
let dir;
let pageUrl;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "sluice-dev-page-"));
  dev = spawn(SLUICE, ["dev", "--dir", dir, "--listen", "127.0.0.1:0", "--page", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  pageUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sluice dev printed no page URL in 120 s:\n${devLog}`)), 120_000);
    const read = (chunk) => {
      devLog += chunk;
      const m = /Chat demo page \(open it in two tabs\): (https:\/\/\S+)/.exec(devLog);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    dev.stdout.on("data", read);
    dev.stderr.on("data", read);
    dev.once("exit", (code) => reject(new Error(`sluice dev exited with ${code}:\n${devLog}`)));
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // The dev server's certificate is self-signed.
      "--ignore-certificate-errors",
    ],
    timeout: 60_000,
  });
});

after(async () => {
  await browser?.close();
  if (dev && dev.exitCode === null) {
    const exited = new Promise((r) => dev.once("exit", r));
    dev.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A page of its own browser context (so one can go offline alone). */
async function open(name, room) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${pageUrl}?name=${name}&room=${room}`);
  await page.waitForFunction(() => window.sluiceDemo?.client.state === "open", null, { timeout: 20_000 });
  await page.waitForSelector("#status[data-state=open]");
  return { context, page, errors };
}

const lines = (page) =>
  page.$$eval("#messages li", (lis) => lis.map((li) => ({ seq: Number(li.dataset.seq), text: li.childNodes[1].textContent })));

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: 10_000 });
}

/** What each page shows and its client's trace, and the dev server's log, for a failure. */
async function explain(pages, error) {
  const parts = [];
  for (const [name, { page }] of Object.entries(pages)) {
    const seen = await page
      .evaluate(() => ({
        state: window.sluiceDemo.client.state,
        status: document.getElementById("status").textContent,
        messages: [...document.querySelectorAll("#messages li")].map((li) => `${li.dataset.seq}: ${li.textContent}`),
        activity: document.getElementById("activity").textContent,
        error: document.getElementById("error").textContent,
        present: document.getElementById("present").textContent,
        trace: window.sluiceDemo.trace,
      }))
      .catch((e) => ({ unreadable: String(e) }));
    parts.push(`--- ${name}'s page:\n${JSON.stringify(seen, null, 1)}`);
  }
  parts.push(`--- sluice dev's log (the end):\n${devLog.slice(-6000)}`);
  error.message += `\n${parts.join("\n")}`;
  return error;
}

test("two pages chat; one offline for 5 s shows every message it missed, once, in order", { timeout: 180_000 }, async () => {
  const room = `r${Date.now()}`;
  const alice = await open("alice", room);
  const bob = await open("bob", room);
  try {
    await chatWithOneOffline(alice, bob);
  } catch (e) {
    throw await explain({ alice, bob }, e);
  }
});

async function chatWithOneOffline(alice, bob) {
  await say(alice.page, "hello from alice");
  await bob.page.waitForSelector("#messages li:has-text('hello from alice')", { timeout: 10_000 });
  await say(bob.page, "hi alice, bob here");
  await alice.page.waitForSelector("#messages li:has-text('hi alice, bob here')", { timeout: 10_000 });
  assert.match(await bob.page.textContent("#who"), /You are bob in room:/);
  assert.match(await alice.page.textContent("#activity"), /bob joined/);
  // Presence: each page lists both (join events keep it current).
  await alice.page.waitForSelector("#present:has-text('alice'):has-text('bob')", { timeout: 10_000 });
  await bob.page.waitForSelector("#present:has-text('alice'):has-text('bob')", { timeout: 10_000 });

  // Bob goes offline; the page notices (heartbeat) and waits to reconnect.
  await bob.page.evaluate(() => {
    window.drops = 0;
    window.sluiceDemo.client.on("disconnected", () => (window.drops += 1));
  });
  const offlineAt = Date.now();
  await bob.context.setOffline(true);
  const missed = Array.from({ length: 20 }, (_, i) => `missed ${i + 1}`);
  for (const text of missed) await say(alice.page, text);
  await bob.page.waitForFunction(() => window.sluiceDemo.client.state !== "open", null, { timeout: 15_000 });
  const stillOffline = 5000 - (Date.now() - offlineAt);
  if (stillOffline > 0) await new Promise((r) => setTimeout(r, stillOffline));
  assert.ok(!(await lines(bob.page)).some((l) => l.text === "missed 1"), "nothing arrived while offline");
  await bob.context.setOffline(false);

  await bob.page.waitForFunction(() => window.sluiceDemo.client.state === "open", null, { timeout: 30_000 });
  await bob.page.waitForSelector("#messages li:has-text('missed 20')", { timeout: 10_000 });
  const shown = await lines(bob.page);
  const texts = shown.map((l) => l.text);
  assert.deepEqual(texts, ["hello from alice", "hi alice, bob here", ...missed], "every message once, in order");
  assert.deepEqual(
    shown.map((l) => l.seq),
    shown.map((_, i) => i + 1),
  );
  assert.ok((await bob.page.evaluate(() => window.drops)) >= 1, "bob's connection dropped");
  assert.match(await bob.page.textContent("#activity"), /Back online: 20 missed messages shown/);

  // After the reconnect, bob can still talk.
  await say(bob.page, "back");
  await alice.page.waitForSelector("#messages li:has-text('back')", { timeout: 10_000 });

  await alice.page.screenshot({ path: join(output, "chat-alice.png"), fullPage: true });
  await bob.page.screenshot({ path: join(output, "chat-bob.png"), fullPage: true });
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
}

test("the page's token endpoint refuses cross-site requests and bad names", async () => {
  const { context, page } = await open("carol", "tokens");
  const status = await page.evaluate(async () => [
    (await fetch("/token?name=carol")).status,
    (await fetch("/token?name=no%20spaces")).status,
    (await fetch("/token")).status,
  ]);
  assert.deepEqual(status, [200, 400, 400]);
  // A request a browser marks as cross-site (another site's page calling it).
  const foreign = await context.request.get(`${pageUrl}token?name=carol`, { headers: { "sec-fetch-site": "cross-site" } });
  assert.equal(foreign.status(), 403);
  await context.close();
});
