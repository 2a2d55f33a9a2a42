// A real `sluice serve` on a free loopback port, with a temporary config,
// certificate and HMAC secret; tokens minted with `sluice token`.
// Channels of tenant `t`: `room:{id}` (no history), `feed:{id}` (history of
// 1000, presence with join/leave events), `tiny:{id}` (history of 5, no
// presence); presence_debounce_ms is PRESENCE_DEBOUNCE_MS.
//
// Needs the sluice binary (SLUICE_BIN, default target/debug/sluice of the
// repository) and the handlers built by handlers/build.
//
// `startFleet(n)`: a real nats-server with JetStream on a free loopback port
// and n `sluice serve` nodes on it (`[cluster]`), each with the same tenants,
// certificate and secret as `startServer()`'s. The nats-server binary:
// SLUICE_NATS_SERVER, else the one scripts/install-nats-server installs.
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const SLUICE = process.env.SLUICE_BIN ?? join(root, "target/debug/sluice");
const components = join(root, "handlers/target/wasm32-wasip2/release");
/** Tenant `t`'s presence_debounce_ms: how long a subject whose last connection left stays a member. */
export const PRESENCE_DEBOUNCE_MS = 3000;
/** The history size of `tiny:{id}` channels (`feed:{id}` keeps 1000). */
export const TINY_HISTORY = 5;

/** A port nobody listens on right now. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * The config file: `server` adds lines to `[server]`, `tables` appends
 * tables (a fleet node's `[cluster]`, `[management]`).
 */
function config(port, { server = "", tables = "" } = {}) {
  const echo = JSON.stringify(join(components, "echo.wasm"));
  const chat = JSON.stringify(join(components, "chat.wasm"));
  const misbehave = JSON.stringify(join(components, "misbehave.wasm"));
  const tenant = (name, limits) => `
[tenants.${name}]
origins = ["https://app.example"]
exposed_claims = ["name"]

[tenants.${name}.auth]
issuer = "sluice-test"
audience = "sluice"
leeway_secs = 0

[[tenants.${name}.auth.keys]]
algorithm = "HS256"
secret_file = "secret.key"

[tenants.${name}.limits]
${limits}

[tenants.${name}.handlers.echo]
component = ${echo}

[tenants.${name}.handlers.chat]
component = ${chat}
grants = ["state", "clock"]

[tenants.${name}.handlers.misbehave]
component = ${misbehave}
grants = ["state", "log"]
limits = { deadline_ms = 200, quarantine_after = 2, quarantine_ms = 3000 }

[tenants.${name}.routes.echo]
handler = "echo"

[tenants.${name}.routes."admin.echo"]
handler = "echo"
scopes = ["admin"]

[tenants.${name}.routes.misbehave]
handler = "misbehave"

[tenants.${name}.routes."chat.join"]
handler = "chat"
channel = "subscribe"

[tenants.${name}.routes."chat.leave"]
handler = "chat"
channel = "subscribe"

[tenants.${name}.routes."chat.send"]
handler = "chat"
channel = "publish"
scopes = ["chat:write"]
schema = { type = "object", required = ["text"], additionalProperties = false, properties = { text = { type = "string", minLength = 1, maxLength = 500 } } }

[[tenants.${name}.channels]]
pattern = "room:{id}"
publish_scopes = ["chat:write"]

[[tenants.${name}.channels]]
pattern = "user:{sub}"
publish = false

[[tenants.${name}.channels]]
pattern = "feed:{id}"
publish_scopes = ["chat:write"]
history = { size = 1000, ttl_secs = 600 }
presence = true
presence_events = true

[[tenants.${name}.channels]]
pattern = "tiny:{id}"
publish_scopes = ["chat:write"]
history = { size = ${TINY_HISTORY}, ttl_secs = 600 }
`;
  return `[server]
listen = "127.0.0.1:${port}"
tls_cert = "cert.pem"
tls_key = "key.pem"
drain_timeout_ms = 2000
${server}
${tenant("t", "messages_per_sec = 5000\nmessage_burst = 5000\nsubject_messages_per_sec = 5000\ntenant_messages_per_sec = 50000\npresence_debounce_ms = " + PRESENCE_DEBOUNCE_MS)}
${tenant("slow", "messages_per_sec = 1\nmessage_burst = 2\nabuse_close_after = 1000")}
${tables}`;
}

/**
 * `sluice serve -c configPath`, listening on `port`: `start()` (waits for
 * its "listening" line, at most `patienceMs`), `stop()` (SIGTERM, waits for
 * the exit), `start()` again on the same port.
 */
function serveProcess(configPath, port, patienceMs) {
  return {
    port,
    url: (tenant = "t") => `wss://127.0.0.1:${port}/ws/${tenant}`,
    child: undefined,
    log: "",
    async start() {
      const child = spawn(SLUICE, ["serve", "-c", configPath], { stdio: ["ignore", "ignore", "pipe"] });
      this.child = child;
      await new Promise((res, rej) => {
        const timer = setTimeout(
          () => rej(new Error(`sluice serve did not start in ${patienceMs / 1000} s:\n${this.log}`)),
          patienceMs,
        );
        child.stderr.on("data", (chunk) => {
          this.log += chunk;
          if (this.log.includes(`sluice listening on wss://127.0.0.1:${port}`)) {
            clearTimeout(timer);
            res();
          }
        });
        child.once("exit", (code) => {
          clearTimeout(timer);
          rej(new Error(`sluice serve exited with ${code}:\n${this.log}`));
        });
      });
    },
    async stop() {
      await stopChild(this.child);
      this.child = undefined;
    },
  };
}

/** SIGTERM `child` and wait for its exit (SIGKILL after 10 s). */
async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((res) => child.once("exit", res));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

/** `sluice token` for a subject of `tenant`, signed with the secret beside `configPath`. */
async function mintToken(configPath, sub, { scopes = ["chat:write"], ttl = 3600, tenant = "t", claims = {} } = {}) {
  const args = ["token", "-c", configPath, "--tenant", tenant, "--sub", sub, "--ttl", String(ttl)];
  for (const s of scopes) args.push("--scope", s);
  for (const [name, value] of Object.entries(claims)) args.push("--claim", `${name}=${JSON.stringify(value)}`);
  const { stdout } = await run(SLUICE, args);
  return stdout.trim();
}

/** Start a server; `stop()` it (SIGTERM, waits for the exit), `start()` it again on the same port. */
export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "sluice-client-test-"));
  await run(SLUICE, ["cert", "--out", dir, "--secret"]);
  const port = await freePort();
  const configPath = join(dir, "sluice.toml");
  writeFileSync(configPath, config(port));
  const server = {
    ...serveProcess(configPath, port, 20_000),
    dir,
    ca: readFileSync(join(dir, "cert.pem")),
    /** A token for tenant `t` (or `tenant`), with extra `claims` (e.g. `{ name: "Alice" }`). */
    token: (sub, options) => mintToken(configPath, sub, options),
    async close() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}

/** The pinned nats-server: SLUICE_NATS_SERVER, else installed (once) by scripts/install-nats-server. */
async function natsServerBin() {
  if (process.env.SLUICE_NATS_SERVER) return process.env.SLUICE_NATS_SERVER;
  const { stdout } = await run("bash", [join(root, "scripts/install-nats-server")], { cwd: root });
  return stdout.trim().split("\n").pop();
}

/**
 * A fleet: a nats-server with JetStream on a free loopback port and `n`
 * `sluice serve` nodes (`node-1`...`node-n`) on it, sharing the tenants,
 * certificate and secret (a token is valid on every node). `nodes[i]` has
 * `name`, `port`, `url()`, `admin` (its admin listener's port: /metrics),
 * `stop()`, `start()`; `close()` stops them all and nats-server. No node
 * has the management API.
 */
export async function startFleet(n) {
  const dir = mkdtempSync(join(tmpdir(), "sluice-client-fleet-"));
  const fleet = {
    dir,
    ca: undefined,
    nats: undefined,
    natsLog: "",
    nodes: [],
    /** A token for tenant `t` (or `tenant`), valid on every node. */
    token: (sub, options) => mintToken(join(dir, "node-1.toml"), sub, options),
    async close() {
      await Promise.all(this.nodes.map((node) => node.stop()));
      await stopChild(this.nats);
      this.nats = undefined;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await run(SLUICE, ["cert", "--out", dir, "--secret"]);
    fleet.ca = readFileSync(join(dir, "cert.pem"));
    const natsPort = await freePort();
    const nats = spawn(
      await natsServerBin(),
      ["-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", join(dir, "nats"), "-n", "sluice-client-test"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    fleet.nats = nats;
    await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`nats-server did not start in 60 s:\n${fleet.natsLog}`)), 60_000);
      const read = (chunk) => {
        fleet.natsLog += chunk;
        if (fleet.natsLog.includes("Server is ready")) {
          clearTimeout(timer);
          res();
        }
      };
      nats.stdout.on("data", read);
      nats.stderr.on("data", read);
      nats.once("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`nats-server exited with ${code}:\n${fleet.natsLog}`));
      });
    });
    for (let i = 1; i <= n; i++) {
      const port = await freePort();
      const admin = await freePort();
      const configPath = join(dir, `node-${i}.toml`);
      writeFileSync(
        configPath,
        config(port, {
          server: `admin_listen = "127.0.0.1:${admin}"`,
          tables: `
[management]
enabled = false

[cluster]
nats_urls = ["nats://127.0.0.1:${natsPort}"]
node = "node-${i}"
`,
        }),
      );
      // A node connects to NATS and creates or binds its streams and
      // buckets before it listens: generous on a loaded machine.
      const node = { ...serveProcess(configPath, port, 120_000), admin, name: `node-${i}` };
      fleet.nodes.push(node);
      await node.start();
    }
  } catch (e) {
    await fleet.close();
    throw e;
  }
  return fleet;
}

/** Resolve when `predicate()` holds, polling; fail after `ms`. */
export async function until(predicate, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
