// The chat demo page's script: @sluice/client, a room, the room's history
// merged by sequence number so a tab that was offline shows what it missed.
import { SluiceClient } from "/sluice-client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = (params.get("name") || `guest-${Math.random().toString(36).slice(2, 6)}`).replace(/[^A-Za-z0-9_-]/g, "").slice(0, 24);
const room = `room:${(params.get("room") || "lobby").replace(/[^A-Za-z0-9_.-]/g, "").slice(0, 60) || "lobby"}`;
const url = document.querySelector('meta[name="sluice-url"]').content;

const client = new SluiceClient({
  url,
  // Short-lived tokens from the dev server's page-only endpoint.
  getToken: async () => {
    const response = await fetch(`/token?name=${encodeURIComponent(name)}`);
    if (!response.ok) throw new Error(`token endpoint: ${response.status}`);
    return (await response.json()).token;
  },
  // Notice a dead connection within seconds (the default is 25 s + 10 s).
  heartbeatIntervalMs: 5000,
  heartbeatTimeoutMs: 3000,
});

const lines = new Map(); // seq -> <li>
let shown = 0;
function addLine(line, missed) {
  if (typeof line.seq !== "number" || lines.has(line.seq)) return false;
  const li = document.createElement("li");
  li.dataset.seq = String(line.seq);
  if (missed) li.className = "missed";
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = line.from;
  const at = document.createElement("span");
  at.className = "at";
  at.textContent = new Date(line.at).toLocaleTimeString();
  li.append(from, document.createTextNode(line.text), at);
  const after = [...lines.keys()].filter((s) => s > line.seq).sort((a, b) => a - b)[0];
  $("messages").insertBefore(li, after === undefined ? null : lines.get(after));
  lines.set(line.seq, li);
  shown += 1;
  $("messages").scrollTop = $("messages").scrollHeight;
  return true;
}

function status(state, detail = "") {
  $("status").dataset.state = state;
  $("status").textContent = detail ? `${state}: ${detail}` : state;
}

client.on("state", (state) => status(state));
client.on("disconnected", (d) =>
  status("reconnecting", `${d.code}${d.reason ? ` ${d.reason}` : ""}, next try in ${(d.delayMs / 1000).toFixed(1)} s`),
);
client.on("closed", (c) => status("closed", c.why));
client.on("welcome", (w) => {
  $("who").textContent = `You are ${w.subject} in ${room} (connection ${w.connectionId}).`;
  $("token").textContent = `Token expires at ${new Date(w.expiresAt * 1000).toLocaleTimeString()}.`;
});
client.on("refreshed", (r) => {
  $("token").textContent = `Token refreshed without reconnecting; expires at ${new Date(r.expiresAt * 1000).toLocaleTimeString()}.`;
});

// recover: after a reconnect, chat.join carries the last event's position
// and the server replays every event missed (the demo rooms keep channel
// history); the room's last 20 lines in the reply fill in a new tab.
const sub = client.subscribe(room, { type: "chat.join", leave: { type: "chat.leave" }, recover: true });

// Who is here: presence, kept current by join and leave events.
const present = new Map(); // subject -> display name
function showPresent() {
  const names = [...present.values()].sort();
  $("present").textContent = names.length ? `Here: ${names.join(", ")}` : "";
}
async function refreshPresence() {
  try {
    const { members } = await sub.presence();
    present.clear();
    for (const m of members) present.set(m.subject, m.claims?.name || m.subject);
    showPresent();
  } catch (e) {
    $("present").textContent = `presence: ${e.code}`;
  }
}
sub.on("join", ({ subject, claims }) => {
  present.set(subject, claims?.name || subject);
  showPresent();
});
sub.on("leave", ({ subject }) => {
  present.delete(subject);
  showPresent();
});
// Between a drop and the rejoin's answer, events are the ones replayed.
let catchingUp = false;
let replayed = 0;
client.on("disconnected", () => {
  catchingUp = true;
  replayed = 0;
});
sub.on("subscribed", ({ data, resubscribed }) => {
  refreshPresence();
  // What the server replayed, plus the room's last 20 lines in chat.join's
  // answer that this tab has not shown (all it has after a failed recovery).
  let missed = replayed;
  for (const line of data?.history ?? []) if (addLine(line, resubscribed)) missed += 1;
  catchingUp = false;
  replayed = 0;
  if (resubscribed) $("activity").textContent = `Back online: ${missed} missed message${missed === 1 ? "" : "s"} shown.`;
});
sub.on("event", ({ data }) => {
  if (data.kind === "message") {
    if (addLine(data, catchingUp) && catchingUp) replayed += 1;
  }
  else if (data.kind === "joined" || data.kind === "left") $("activity").textContent = `${data.from} ${data.kind}.`;
});
sub.on("error", (e) => status("closed", `${e.code}: ${e.message}`));

$("send").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value;
  $("error").textContent = "";
  try {
    await client.request("chat.send", { text }, { channel: room });
    input.value = "";
  } catch (e) {
    $("error").textContent = `${e.code}: ${e.message}${e.retryAfterMs ? ` (retry in ${e.retryAfterMs} ms)` : ""}`;
  }
});

// For the browser test and the curious: the client, the room's
// subscription, what is shown, and the last 200 things that happened.
const trace = [];
function note(what, detail) {
  if (detail instanceof Error) detail = { code: detail.code, message: detail.message };
  trace.push(`${new Date().toISOString().slice(11, 23)} ${what}${detail === undefined ? "" : ` ${JSON.stringify(detail)}`}`);
  if (trace.length > 200) trace.shift();
}
for (const what of ["state", "disconnected", "welcome", "closed", "recoveryFailed"]) client.on(what, (d) => note(what, d));
client.on("event", (e) => note("event", { offset: e.offset, data: e.data }));
for (const what of ["subscribed", "error"]) sub.on(what, (d) => note(`room ${what}`, d));
window.sluiceDemo = { client, sub, name, room, shown: () => shown, trace };
client.connect();
