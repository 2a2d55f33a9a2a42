// Test-only hostile handler in JavaScript (the tests' counterpart of
// handlers/misbehave, for the limits an interpreter must respect too).
// Driven by data {"mode": "..."}:
//   ok     replies {"ok":true}
//   spin   loops forever (fuel / deadline must stop it)
//   alloc  keeps allocating 1 MiB buffers (the memory cap must stop it)

function reject(code, message) {
  return { tag: 'reject', val: { code, message } };
}

export const events = {
  onConnect(_conn) {
    return [];
  },
  onMessage(_conn, msg) {
    let mode;
    try {
      mode = JSON.parse(msg.data).mode;
    } catch (e) {
      throw reject('invalid_data', 'data does not fit');
    }
    switch (mode) {
      case 'ok':
        return [{ tag: 'reply', val: JSON.stringify({ ok: true }) }];
      case 'spin': {
        let n = 0;
        for (;;) {
          n = (n + 1) | 0;
        }
      }
      case 'alloc': {
        const blocks = [];
        for (;;) {
          const block = new Uint8Array(1 << 20);
          block[0] = 7;
          blocks.push(block);
        }
      }
      default:
        throw reject('unknown_mode', `no mode ${JSON.stringify(mode)}`);
    }
  },
  onDisconnect(_conn) {
    return [];
  },
};
