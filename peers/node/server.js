'use strict';
// The Node.js benchmark peer: the realtime backend users hand-build instead
// of Sluice. An https server with `ws`, the JWT verified with `jsonwebtoken`
// before the upgrade, each message's `data` validated with `ajv`, and the
// echo and chat handlers run in-process.
//
// It speaks Sluice's client protocol for the routes of
// peers/sluice-bench.toml (tenant `bench`: echo, chat.join, chat.leave,
// chat.send) and answers with the frames Sluice sends: welcome, ack, error
// (same codes, same messages where it matters), event, pong. The schemas are
// the files Sluice's benchmark config uses (peers/schemas/).
//
// What it does like Sluice: path /ws/bench (404 otherwise); exact Origin
// match, no Origin allowed (403); the token from `Authorization: Bearer`,
// else `Sec-WebSocket-Protocol: sluice.v1, bearer.<token>` (answered with
// `sluice.v1`), HS256 pinned, issuer, audience, exp required, nbf, 30 s
// leeway, sub required (401, no detail); the envelope's fields and types;
// route scopes; channel names and rules (room:{id}, user:{sub}); the
// actions a handler returns authorized again; 64 KiB messages (1009 past
// that); invalid UTF-8 closes with 1007; binary frames refused; subscribe,
// unsubscribe, ping and refresh; close 1008 when the token expires.
//
// What it leaves out, as a typical hand-built server does: rate limits,
// connection caps (429), a handshake deadline, the JSON depth limit
// (`too_deep`), server pings and the idle timeout, a bound on a slow
// consumer's queue, tokens in the query string, graceful drain.
//
// Usage:
//   node server.js --listen 127.0.0.1:0 --cert C --key K --secret-file F
// (or the secret in $SLUICE_BENCH_SECRET). Prints `listening on ADDR` once
// it accepts connections.

const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const path = require('node:path');
const { WebSocketServer, WebSocket } = require('ws');
const jwt = require('jsonwebtoken');
const Ajv = require('ajv');

// --- The tenant: mirrors peers/sluice-bench.toml ---------------------------
const TENANT = 'bench';
const ISSUER = 'sluice-bench';
const AUDIENCE = 'sluice';
const LEEWAY_SECS = 30; // Sluice's default leeway_secs
const ORIGINS = ['https://bench.example.com'];
const SCOPES_CLAIM = 'scope';

// --- Sluice's protocol constants -----------------------------------------
const SUBPROTOCOL = 'sluice.v1';
const TOKEN_PROTOCOL_PREFIX = 'bearer.';
const MAX_MESSAGE_BYTES = 64 * 1024; // max_message_bytes
const MAX_ID_BYTES = 64;
const MAX_SUBSCRIPTIONS = 256;
const RESERVED_TYPES = new Set([
  'subscribe', 'unsubscribe', 'ping', 'refresh',
  'welcome', 'ack', 'error', 'event', 'pong',
]);
const ENVELOPE_FIELDS = new Set(['type', 'id', 'channel', 'data']);
const CHANNEL_RE = /^[A-Za-z0-9:_.-]{1,128}$/;
const SEGMENT_RE = /^[A-Za-z0-9_.-]+$/;

// --- The chat handler's constants (handlers/chat) ----------------------------
const HISTORY_LEN = 20;
const MAX_TEXT_CHARS = 500;

function parseArgs(argv) {
  const args = { listen: '127.0.0.1:0' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    switch (flag) {
      case '--listen': args.listen = value; i++; break;
      case '--cert': args.cert = value; i++; break;
      case '--key': args.key = value; i++; break;
      case '--secret-file': args.secretFile = value; i++; break;
      case '--help': case '-h':
        process.stdout.write('node server.js --listen HOST:PORT --cert PEM --key PEM --secret-file FILE\n' +
          '  (the HMAC secret may come from $SLUICE_BENCH_SECRET instead of --secret-file)\n');
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${flag}`);
    }
  }
  if (!args.cert || !args.key) throw new Error('--cert and --key are required');
  return args;
}

function loadSecret(file) {
  // Read like Sluice's secret_file / secret_env: trimmed, at least 32 bytes.
  const secret = file ? fs.readFileSync(file, 'utf8').trim() : process.env.SLUICE_BENCH_SECRET;
  if (!secret) throw new Error('no HMAC secret: give --secret-file or set $SLUICE_BENCH_SECRET');
  if (Buffer.byteLength(secret) < 32) throw new Error('the HMAC secret is shorter than 32 bytes');
  return Buffer.from(secret);
}

// --- Schemas (the files Sluice's benchmark config names) ---------------------
const ajv = new Ajv();
function schema(name) {
  const file = path.join(__dirname, '..', 'schemas', name);
  return ajv.compile(JSON.parse(fs.readFileSync(file, 'utf8')));
}

// --- Channel rules -----------------------------------------------------------
// `{sub}` matches the principal's subject, any other `{name}` one segment of
// A-Z a-z 0-9 _ - . ; a placeholder runs to the next literal (or the end).
function compilePattern(pattern) {
  const placeholders = [];
  const source = pattern.replace(/[.*+?^${}()|[\]\\]/g, (c) => (c === '{' || c === '}' ? c : `\\${c}`))
    .replace(/\{([a-z_:]+)\}/gi, (_, name) => {
      placeholders.push(name);
      return '(.*?)';
    });
  const re = new RegExp(`^${source}$`);
  return (channel, principal) => {
    const m = re.exec(channel);
    if (!m) return false;
    return placeholders.every((name, i) => (name === 'sub' ? m[i + 1] === principal.subject : SEGMENT_RE.test(m[i + 1])));
  };
}

const CHANNEL_RULES = [
  { matches: compilePattern('room:{id}'), subscribe: true, publish: true, subscribeScopes: [], publishScopes: ['chat:write'] },
  { matches: compilePattern('user:{sub}'), subscribe: true, publish: false, subscribeScopes: [], publishScopes: [] },
];

function hasScopes(principal, needed) {
  return needed.every((s) => principal.scopes.has(s));
}

function channelAllowed(principal, channel, op) {
  return CHANNEL_RE.test(channel) && CHANNEL_RULES.some((r) => {
    const allowed = op === 'publish' ? r.publish : r.subscribe;
    const scopes = op === 'publish' ? r.publishScopes : r.subscribeScopes;
    return allowed && hasScopes(principal, scopes) && r.matches(channel, principal);
  });
}

// --- Frames, as Sluice writes them ---------------------------------------------
const ackFrame = (id, data) => JSON.stringify({ type: 'ack', id, data });
const errorFrame = (id, code, message) => JSON.stringify({ type: 'error', id, code, message });
const eventFrame = (channel, data) => JSON.stringify({ type: 'event', channel, data });

class Rejection {
  constructor(code, message) {
    this.code = code;
    this.message = message;
  }
}

function send(ws, frame) {
  if (ws.readyState === WebSocket.OPEN) ws.send(frame);
}

// --- Tokens ----------------------------------------------------------------------
function makeVerifier(secret) {
  return function verify(token) {
    let decoded;
    try {
      decoded = jwt.verify(token, secret, {
        algorithms: ['HS256'],
        issuer: ISSUER,
        audience: AUDIENCE,
        clockTolerance: LEEWAY_SECS,
        complete: true,
      });
    } catch {
      return null;
    }
    const { header, payload: claims } = decoded;
    // Sluice's bench key has no kid: a token naming one finds no key.
    if (header.kid !== undefined) return null;
    if (!Number.isSafeInteger(claims.exp) || claims.exp < 0) return null;
    if (claims.nbf !== undefined && typeof claims.nbf !== 'number') return null;
    const sub = claims.sub;
    if (typeof sub !== 'string' || sub.length === 0 || Buffer.byteLength(sub) > 256) return null;
    const raw = claims[SCOPES_CLAIM];
    let scopes = [];
    if (typeof raw === 'string') scopes = raw.split(/\s+/).filter(Boolean);
    else if (Array.isArray(raw)) scopes = raw.filter((s) => typeof s === 'string');
    return { subject: sub, scopes: new Set(scopes), claims, expiresAt: claims.exp };
  };
}

/// The token and whether the client offered `sluice.v1`, like Sluice's
/// handshake: Authorization first, then the subprotocol.
function tokenOf(req) {
  const offered = (req.headers['sec-websocket-protocol'] || '')
    .split(',').map((p) => p.trim()).filter(Boolean);
  const auth = req.headers.authorization;
  if (auth !== undefined) {
    const space = auth.indexOf(' ');
    if (space < 0 || auth.slice(0, space).toLowerCase() !== 'bearer') return null;
    return auth.slice(space + 1).trim();
  }
  const p = offered.find((x) => x.startsWith(TOKEN_PROTOCOL_PREFIX));
  return p === undefined ? null : p.slice(TOKEN_PROTOCOL_PREFIX.length);
}

// --- The server ------------------------------------------------------------------
function main() {
  const args = parseArgs(process.argv.slice(2));
  const verify = makeVerifier(loadSecret(args.secretFile));
  const channels = new Map(); // channel -> Set of sessions
  const rooms = new Map(); // channel -> { nextSeq, history }
  let nextConnectionId = 1;

  // --- Handlers, in-process: the same logic as handlers/echo and handlers/chat.
  // Objects are built with their keys sorted, as the Rust handlers' JSON is.
  function echo(session, env) {
    return { reply: env.data };
  }

  function chat(session, env, actions) {
    const channel = env.channel;
    const from = session.principal.subject;
    switch (env.type) {
      case 'chat.join': {
        const room = rooms.get(channel);
        actions.subscribe(channel);
        actions.publish(channel, { from, kind: 'joined' });
        return { reply: { history: room ? room.history : [] } };
      }
      case 'chat.leave':
        actions.unsubscribe(channel);
        actions.publish(channel, { from, kind: 'left' });
        return { reply: {} };
      case 'chat.send': {
        const text = env.data.text;
        if (text.trim().length === 0) throw new Rejection('empty_text', 'text must not be empty');
        if ([...text].length > MAX_TEXT_CHARS) {
          throw new Rejection('text_too_long', `text must be at most ${MAX_TEXT_CHARS} characters`);
        }
        let room = rooms.get(channel);
        if (!room) {
          room = { nextSeq: 0, history: [] };
          rooms.set(channel, room);
        }
        room.nextSeq += 1;
        const line = { at: Date.now(), from, seq: room.nextSeq, text };
        room.history.push(line);
        if (room.history.length > HISTORY_LEN) room.history.splice(0, room.history.length - HISTORY_LEN);
        actions.publish(channel, { at: line.at, from, kind: 'message', seq: line.seq, text });
        return { reply: { seq: line.seq } };
      }
      default:
        throw new Rejection('unknown_route', `chat has no route ${JSON.stringify(env.type)}`);
    }
  }

  const ROUTES = new Map([
    ['echo', { handler: echo, scopes: [], channel: 'none', validate: schema('echo.json') }],
    ['chat.join', { handler: chat, scopes: [], channel: 'subscribe', validate: null }],
    ['chat.leave', { handler: chat, scopes: [], channel: 'subscribe', validate: null }],
    ['chat.send', { handler: chat, scopes: ['chat:write'], channel: 'publish', validate: schema('chat.send.json') }],
  ]);

  function subscribe(session, channel) {
    if (!CHANNEL_RE.test(channel)) throw new Rejection('invalid_channel', 'invalid channel name');
    if (!channelAllowed(session.principal, channel, 'subscribe')) {
      throw new Rejection('forbidden', 'not allowed to subscribe to this channel');
    }
    if (session.subscriptions.has(channel)) return;
    if (session.subscriptions.size >= MAX_SUBSCRIPTIONS) {
      throw new Rejection('too_many_subscriptions', 'too many subscriptions');
    }
    session.subscriptions.add(channel);
    let subs = channels.get(channel);
    if (!subs) {
      subs = new Set();
      channels.set(channel, subs);
    }
    subs.add(session);
  }

  function unsubscribe(session, channel) {
    if (!session.subscriptions.delete(channel)) return;
    const subs = channels.get(channel);
    if (subs) {
      subs.delete(session);
      if (subs.size === 0) channels.delete(channel);
    }
  }

  function publish(channel, data) {
    const subs = channels.get(channel);
    if (!subs) return;
    const frame = eventFrame(channel, data); // serialized once
    for (const s of subs) send(s.ws, frame);
  }

  // The actions a handler asks for, authorized again like Sluice does: a
  // refused one is dropped.
  function actionsFor(session) {
    return {
      subscribe(channel) {
        try {
          subscribe(session, channel);
        } catch {
          // refused: dropped
        }
      },
      unsubscribe(channel) {
        unsubscribe(session, channel);
      },
      publish(channel, data) {
        if (channelAllowed(session.principal, channel, 'publish')) publish(channel, data);
      },
    };
  }

  /// The envelope, or a Rejection worded as Sluice words it.
  function envelope(msg) {
    const bad = (what) => new Rejection('bad_envelope', `not a valid envelope {type, id, channel, data}: ${what}`);
    const wrong = 'a field of the wrong type (type, id, key and channel are strings)';
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) throw bad('expected an object');
    for (const k of Object.keys(msg)) {
      if (!ENVELOPE_FIELDS.has(k)) throw bad('an unknown field (the fields are type, id, key, channel, data)');
    }
    if (!('type' in msg)) throw bad('missing field `type`');
    if (typeof msg.type !== 'string') throw bad(wrong);
    if (msg.id != null && typeof msg.id !== 'string') throw bad(wrong);
    if (msg.channel != null && typeof msg.channel !== 'string') throw bad(wrong);
    const env = {
      type: msg.type,
      id: msg.id ?? null,
      channel: msg.channel ?? null,
      data: msg.data === undefined ? null : msg.data,
    };
    if (env.id !== null && Buffer.byteLength(env.id) > MAX_ID_BYTES) {
      throw new Rejection('bad_envelope', `id longer than ${MAX_ID_BYTES} bytes`);
    }
    const typeBytes = Buffer.byteLength(env.type);
    if (typeBytes === 0 || typeBytes > 128) throw new Rejection('bad_envelope', 'type must be 1-128 bytes');
    return env;
  }

  function setExpiry(session) {
    clearTimeout(session.expiry);
    const ms = Math.min((session.principal.expiresAt + LEEWAY_SECS) * 1000 - Date.now(), 2 ** 31 - 1);
    session.expiry = setTimeout(() => session.ws.close(1008, 'token expired'), Math.max(ms, 0));
  }

  function refresh(session, env) {
    const token = env.data !== null && typeof env.data === 'object' && !Array.isArray(env.data)
      ? env.data.token : undefined;
    if (typeof token !== 'string') throw new Rejection('bad_envelope', 'refresh needs data.token');
    const principal = verify(token);
    if (!principal) throw new Rejection('invalid_token', 'the token is not valid');
    if (principal.subject !== session.principal.subject) {
      throw new Rejection('forbidden', 'a refresh must keep the same subject');
    }
    session.principal = principal;
    setExpiry(session);
    const dropped = [...session.subscriptions].filter((ch) => !channelAllowed(principal, ch, 'subscribe')).sort();
    for (const ch of dropped) unsubscribe(session, ch);
    return ackFrame(env.id, { expires_at: principal.expiresAt, dropped });
  }

  /// One message: decode, authorize, validate, run the handler. Returns the
  /// frame that answers it (events are sent on the way).
  function handle(session, text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return errorFrame(null, 'bad_json', 'not valid JSON');
    }
    let env;
    try {
      env = envelope(msg);
    } catch (e) {
      return errorFrame(null, e.code, e.message);
    }
    try {
      return dispatch(session, env);
    } catch (e) {
      if (e instanceof Rejection) return errorFrame(env.id, e.code, e.message);
      return errorFrame(env.id, 'handler_failed', 'the handler failed');
    }
  }

  function dispatch(session, env) {
    const { id } = env;
    switch (env.type) {
      case 'ping':
        return JSON.stringify({ type: 'pong', id });
      case 'subscribe':
      case 'unsubscribe':
        if (env.channel === null) throw new Rejection('bad_envelope', 'subscribe needs a channel');
        if (env.type === 'subscribe') subscribe(session, env.channel);
        else unsubscribe(session, env.channel);
        return ackFrame(id, null);
      case 'refresh':
        return refresh(session, env);
      default:
        break;
    }
    if (RESERVED_TYPES.has(env.type) || env.type.startsWith('sluice.')) {
      throw new Rejection('unknown_type', 'reserved type');
    }
    const route = ROUTES.get(env.type);
    if (!route) throw new Rejection('unknown_type', 'no such message type');
    if (!hasScopes(session.principal, route.scopes)) {
      throw new Rejection('forbidden', 'missing scope for this message type');
    }
    if (route.channel === 'none') {
      if (env.channel !== null) throw new Rejection('bad_envelope', 'this message type takes no channel');
    } else {
      if (env.channel === null) throw new Rejection('bad_envelope', 'this message type needs a channel');
      if (!CHANNEL_RE.test(env.channel)) throw new Rejection('invalid_channel', 'invalid channel name');
      if (!channelAllowed(session.principal, env.channel, route.channel)) {
        throw new Rejection('forbidden', 'not allowed on this channel');
      }
    }
    if (route.validate && !route.validate(env.data)) {
      const e = route.validate.errors[0];
      // Sluice's wording: the keyword and where it sits in the schema, never
      // anything from the data.
      throw new Rejection('schema_invalid', `data fails \`${e.keyword}\` at schema ${e.schemaPath}`);
    }
    const { reply } = route.handler(session, env, actionsFor(session));
    return ackFrame(id, reply === undefined ? null : reply);
  }

  function onConnection(ws, principal) {
    const session = { ws, principal, id: nextConnectionId++, subscriptions: new Set(), expiry: null };
    setExpiry(session);
    send(ws, JSON.stringify({
      type: 'welcome',
      data: { connection_id: session.id, subject: principal.subject, expires_at: principal.expiresAt },
    }));
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        send(ws, errorFrame(null, 'binary_not_supported', 'binary frames are not accepted'));
        return;
      }
      send(ws, handle(session, data.toString()));
    });
    ws.on('error', () => {}); // ws closes the connection (1009, 1007, 1002) itself
    ws.on('close', () => {
      clearTimeout(session.expiry);
      for (const ch of [...session.subscriptions]) unsubscribe(session, ch);
    });
  }

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_MESSAGE_BYTES,
    perMessageDeflate: false,
    handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  });

  const server = https.createServer({
    cert: fs.readFileSync(args.cert),
    key: fs.readFileSync(args.key),
  }, (req, res) => {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('a WebSocket upgrade is expected\n');
  });

  function refuse(socket, status) {
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  }

  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    const pathname = req.url.split('?')[0];
    if (pathname !== `/ws/${TENANT}`) return refuse(socket, 404);
    const origin = req.headers.origin;
    if (origin !== undefined && !ORIGINS.includes(origin)) return refuse(socket, 403);
    const token = tokenOf(req);
    const principal = token === null ? null : verify(token);
    if (!principal) return refuse(socket, 401);
    wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, principal));
    return undefined;
  });

  const colon = args.listen.lastIndexOf(':');
  const host = args.listen.slice(0, colon).replace(/^\[|\]$/g, '');
  const port = Number(args.listen.slice(colon + 1));
  server.listen(port, host, () => {
    const a = server.address();
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    process.stdout.write(`listening on ${shown}:${a.port}\n`);
  });
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

try {
  main();
} catch (e) {
  process.stderr.write(`error: ${e.message}\n`);
  process.exit(1);
}
