// A real `sluice serve` on a free loopback port, with a temporary config,
// certificate and HMAC secret; tokens minted with `sluice token`.
// Channels of tenant `t`: `room:{id}` (no history), `feed:{id}` (history of
// 1000, presence with join/leave events), `tiny:{id}` (history of 5, no
// presence); presence_debounce_ms is PRESENCE_DEBOUNCE_MS.
//
// Needs the sluice binary (SLUICE_BIN, default target/debug/sluice of the
// repository) and the handlers built by handlers/build.
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

function config(port) {
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
${tenant("t", "messages_per_sec = 5000\nmessage_burst = 5000\nsubject_messages_per_sec = 5000\ntenant_messages_per_sec = 50000\npresence_debounce_ms = " + PRESENCE_DEBOUNCE_MS)}
${tenant("slow", "messages_per_sec = 1\nmessage_burst = 2\nabuse_close_after = 1000")}`;
}

/** Start a server; `stop()` it (SIGTERM, waits for the exit), `start()` it again on the same port. */
export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "sluice-client-test-"));
  await run(SLUICE, ["cert", "--out", dir, "--secret"]);
  const port = await freePort();
  const configPath = join(dir, "sluice.toml");
  writeFileSync(configPath, config(port));
  const server = {
    dir,
    port,
    ca: readFileSync(join(dir, "cert.pem")),
    url: (tenant = "t") => `wss://127.0.0.1:${port}/ws/${tenant}`,
    child: undefined,
    log: "",
    async start() {
      const child = spawn(SLUICE, ["serve", "-c", configPath], { stdio: ["ignore", "ignore", "pipe"] });
      this.child = child;
      await new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`sluice serve did not start in 20 s:\n${this.log}`)), 20_000);
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
      const child = this.child;
      if (!child || child.exitCode !== null) return;
      const exited = new Promise((res) => child.once("exit", res));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
      this.child = undefined;
    },
    /** A token for tenant `t` (or `tenant`), with extra `claims` (e.g. `{ name: "Alice" }`). */
    async token(sub, { scopes = ["chat:write"], ttl = 3600, tenant = "t", claims = {} } = {}) {
      const args = ["token", "-c", configPath, "--tenant", tenant, "--sub", sub, "--ttl", String(ttl)];
      for (const s of scopes) args.push("--scope", s);
      for (const [name, value] of Object.entries(claims)) args.push("--claim", `${name}=${JSON.stringify(value)}`);
      const { stdout } = await run(SLUICE, args);
      return stdout.trim();
    },
    async close() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}

/** Resolve when `predicate()` holds, polling; fail after `ms`. */
export async function until(predicate, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
