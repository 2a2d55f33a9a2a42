//! Which export of `sluice:handler/events` a call runs: the one home of the
//! connect / message / disconnect distinction (the server's stages, the
//! sandbox and `sluice call` all use it).

use std::fmt;
use std::str::FromStr;

/// An export of the `events` interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Export {
    /// `on-connect`: a connection was admitted.
    Connect,
    /// `on-message`: an authorized, validated message.
    Message,
    /// `on-disconnect`: the connection is gone (only `publish` and `send`
    /// actions apply).
    Disconnect,
}

impl Export {
    /// The short name (`connect`, `message`, `disconnect`).
    pub fn as_str(self) -> &'static str {
        match self {
            Export::Connect => "connect",
            Export::Message => "message",
            Export::Disconnect => "disconnect",
        }
    }
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Export {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Export::Connect, Export::Message, Export::Disconnect]
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!("unknown export {s:?} (expected connect, message or disconnect)")
            })
    }
}
