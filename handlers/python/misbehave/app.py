"""Test-only hostile handler in Python (the tests' counterpart of
handlers/misbehave, for the limits an interpreter must respect too).
Driven by data {"mode": "..."}:

- ok: replies {"ok":true}
- spin: loops forever (fuel / deadline must stop it)
- alloc: keeps allocating 1 MiB buffers (the memory cap must stop it)
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Action_Reply, HandlerError_Reject, Rejection


class Events(exports.Events):
    def on_connect(self, conn):
        return []

    def on_disconnect(self, conn):
        return []

    def on_message(self, conn, msg):
        try:
            mode = json.loads(msg.data).get("mode")
        except (ValueError, AttributeError):
            raise Err(HandlerError_Reject(Rejection("invalid_data", "data does not fit")))
        if mode == "ok":
            return [Action_Reply(json.dumps({"ok": True}))]
        if mode == "spin":
            n = 0
            while True:
                n = (n + 1) & 0xFFFF
        if mode == "alloc":
            blocks = []
            while True:
                block = bytearray(1 << 20)
                block[0] = 7
                blocks.append(block)
        raise Err(HandlerError_Reject(Rejection("unknown_mode", f"no mode {mode!r}")))
