"""The Sluice chat handler in Python: the same behaviour as the Rust reference
(handlers/chat/src/lib.rs), checked by tests/all/conformance.rs.

Routes (every one needs a channel, the room): chat.join, chat.leave,
chat.send with data {"text": "..."}. History: the last 20 messages of a room,
in tenant state under `room:<channel>` as
{"next_seq": n, "history": [{"seq", "from", "text", "at"}]}.
Rejections: channel_required, invalid_data, empty_text, text_too_long,
unknown_route.

componentize-py conventions: the export `sluice:handler/events` is the class
`Events` of this module; returning a list is `ok`, raising
`componentize_py_types.Err(...)` is `err`; an import that returns
`result<_, E>` raises `Err` on `err`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import clock, state
from wit_world.imports.types import (
    Action_Publish,
    Action_Reply,
    Action_Subscribe,
    Action_Unsubscribe,
    HandlerError_Fail,
    HandlerError_Reject,
    Publish,
    Rejection,
)

HISTORY_LEN = 20
MAX_TEXT_CHARS = 500

# Rust's char::is_whitespace (Unicode White_Space), which str::trim uses.
# Python's str.isspace also counts U+001C..U+001F, so it is not used.
WHITE_SPACE = frozenset(
    "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def reject(code, message):
    return Err(HandlerError_Reject(Rejection(code, message)))


def fail(detail):
    return Err(HandlerError_Fail(detail))


def to_json(value):
    # Compact, and non-ASCII kept as UTF-8 (as serde_json writes it): a
    # history of 20 long texts must fit the host's state value limit.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def room_key(channel):
    return f"room:{channel}"


def load_room(key):
    raw = state.get(key)
    if raw is None:
        return {"next_seq": 0, "history": []}
    try:
        return json.loads(raw)
    except ValueError as e:
        raise fail(f"state value under {key!r} is not valid: {e}")


def store_room(key, room):
    try:
        state.set(key, to_json(room).encode())
    except Err as e:
        raise fail(f"state write refused: {e.value}")


def send_text(data):
    """The text of chat.send's data. Mirrors serde's derive for
    `struct Send { text: String }`: an object with a string `text` (other
    fields ignored), or an array holding exactly that one string."""
    try:
        value = json.loads(data)
    except ValueError as e:
        raise reject("invalid_data", f"data does not fit: {e}")
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str):
            return value[0]
        raise reject("invalid_data", "data does not fit: expected an array of one string")
    if not isinstance(value, dict):
        raise reject("invalid_data", "data does not fit: expected an object")
    if "text" not in value:
        raise reject("invalid_data", "data does not fit: missing field `text`")
    if not isinstance(value["text"], str):
        raise reject("invalid_data", "data does not fit: `text` must be a string")
    return value["text"]


class Events(exports.Events):
    def on_connect(self, conn):
        return []

    def on_disconnect(self, conn):
        return []

    def on_message(self, conn, msg):
        channel = msg.channel
        if channel is None:
            raise reject("channel_required", "chat routes need a channel")
        sender = conn.principal.subject
        route = msg.route
        if route == "chat.join":
            room = load_room(room_key(channel))
            return [
                Action_Subscribe(channel),
                Action_Publish(Publish(channel, to_json({"kind": "joined", "from": sender}))),
                Action_Reply(to_json({"history": room["history"]})),
            ]
        if route == "chat.leave":
            return [
                Action_Unsubscribe(channel),
                Action_Publish(Publish(channel, to_json({"kind": "left", "from": sender}))),
                Action_Reply(to_json({})),
            ]
        if route == "chat.send":
            text = send_text(msg.data)
            if all(c in WHITE_SPACE for c in text):
                raise reject("empty_text", "text must not be empty")
            # len() counts code points: Unicode scalar values, as in Rust.
            if len(text) > MAX_TEXT_CHARS:
                raise reject(
                    "text_too_long", f"text must be at most {MAX_TEXT_CHARS} characters"
                )
            key = room_key(channel)
            room = load_room(key)
            room["next_seq"] += 1
            line = {"seq": room["next_seq"], "from": sender, "text": text, "at": clock.now_ms()}
            room["history"].append(line)
            del room["history"][:-HISTORY_LEN]
            store_room(key, room)
            event = {
                "kind": "message",
                "seq": line["seq"],
                "from": line["from"],
                "text": line["text"],
                "at": line["at"],
            }
            return [
                Action_Publish(Publish(channel, to_json(event))),
                Action_Reply(to_json({"seq": line["seq"]})),
            ]
        raise reject("unknown_route", f"chat has no route {json.dumps(route, ensure_ascii=False)}")
