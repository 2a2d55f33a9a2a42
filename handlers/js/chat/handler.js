// The Sluice chat handler in JavaScript: the same behaviour as the Rust
// reference (handlers/chat/src/lib.rs), checked by tests/all/conformance.rs.
//
// Routes (every one needs a channel, the room): chat.join, chat.leave,
// chat.send with data {"text": "..."}. History: the last 20 messages of a
// room, in tenant state under `room:<channel>` as
// {"next_seq": n, "history": [{"seq","from","text","at"}]}.
// Rejections: channel_required, invalid_data, empty_text, text_too_long,
// unknown_route.
//
// componentize-js conventions: the export `sluice:handler/events` is the
// exported object `events`; returning a value is `ok`, throwing a value is
// `err` (a variant is `{tag, val}`); u64 values arrive as BigInt; an import
// that returns `result<_, E>` throws on `err`.

import { get, set } from 'sluice:handler/state@0.2.0';
import { nowMs } from 'sluice:handler/clock@0.2.0';

const HISTORY_LEN = 20;
const MAX_TEXT_CHARS = 500;

// Rust's char::is_whitespace (Unicode White_Space), which str::trim uses.
// JavaScript's String.prototype.trim also strips U+FEFF and misses U+0085,
// so it is not used.
const ONLY_WHITE_SPACE =
  /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function reject(code, message) {
  return { tag: 'reject', val: { code, message } };
}

function fail(detail) {
  return { tag: 'fail', val: detail };
}

function roomKey(channel) {
  return `room:${channel}`;
}

function loadRoom(key) {
  const bytes = get(key);
  if (bytes === undefined || bytes === null) {
    return { next_seq: 0, history: [] };
  }
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw fail(`state value under ${JSON.stringify(key)} is not valid: ${e}`);
  }
}

function storeRoom(key, room) {
  try {
    set(key, encoder.encode(JSON.stringify(room)));
  } catch (e) {
    throw fail(`state write refused: ${e && e.payload !== undefined ? e.payload : e}`);
  }
}

// The text of chat.send's data. Mirrors serde's derive for
// `struct Send { text: String }`: an object with a string `text` (other
// fields ignored), or an array holding exactly that one string.
function sendText(data) {
  let value;
  try {
    value = JSON.parse(data);
  } catch (e) {
    throw reject('invalid_data', `data does not fit: ${e.message}`);
  }
  if (Array.isArray(value)) {
    if (value.length === 1 && typeof value[0] === 'string') {
      return value[0];
    }
    throw reject('invalid_data', 'data does not fit: expected an array of one string');
  }
  if (value === null || typeof value !== 'object') {
    throw reject('invalid_data', 'data does not fit: expected an object');
  }
  if (!Object.prototype.hasOwnProperty.call(value, 'text')) {
    throw reject('invalid_data', 'data does not fit: missing field `text`');
  }
  if (typeof value.text !== 'string') {
    throw reject('invalid_data', 'data does not fit: `text` must be a string');
  }
  return value.text;
}

function actions() {
  const list = [];
  const b = {
    reply(value) { list.push({ tag: 'reply', val: JSON.stringify(value) }); return b; },
    publish(channel, value) {
      list.push({ tag: 'publish', val: { channel, data: JSON.stringify(value) } });
      return b;
    },
    subscribe(channel) { list.push({ tag: 'subscribe', val: channel }); return b; },
    unsubscribe(channel) { list.push({ tag: 'unsubscribe', val: channel }); return b; },
    list,
  };
  return b;
}

function onMessage(conn, msg) {
  const channel = msg.channel;
  if (channel === undefined || channel === null) {
    throw reject('channel_required', 'chat routes need a channel');
  }
  const from = conn.principal.subject;
  switch (msg.route) {
    case 'chat.join': {
      const room = loadRoom(roomKey(channel));
      return actions()
        .subscribe(channel)
        .publish(channel, { kind: 'joined', from })
        .reply({ history: room.history }).list;
    }
    case 'chat.leave':
      return actions()
        .unsubscribe(channel)
        .publish(channel, { kind: 'left', from })
        .reply({}).list;
    case 'chat.send': {
      const text = sendText(msg.data);
      if (ONLY_WHITE_SPACE.test(text)) {
        throw reject('empty_text', 'text must not be empty');
      }
      // Characters are Unicode scalar values, as in Rust (not UTF-16 units).
      let chars = 0;
      for (const _ of text) {
        chars += 1;
      }
      if (chars > MAX_TEXT_CHARS) {
        throw reject('text_too_long', `text must be at most ${MAX_TEXT_CHARS} characters`);
      }
      const key = roomKey(channel);
      const room = loadRoom(key);
      room.next_seq += 1;
      const line = { seq: room.next_seq, from, text, at: Number(nowMs()) };
      room.history.push(line);
      if (room.history.length > HISTORY_LEN) {
        room.history.splice(0, room.history.length - HISTORY_LEN);
      }
      storeRoom(key, room);
      return actions()
        .publish(channel, {
          kind: 'message', seq: line.seq, from: line.from, text: line.text, at: line.at,
        })
        .reply({ seq: line.seq }).list;
    }
    default:
      throw reject('unknown_route', `chat has no route ${JSON.stringify(msg.route)}`);
  }
}

export const events = {
  onConnect(_conn) {
    return [];
  },
  onMessage,
  onDisconnect(_conn) {
    return [];
  },
};
