//! Message types the host handles itself; no route may use them.

/// A reserved message type. The first five are requests a client sends;
/// the rest are frames only the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservedType {
    /// `subscribe` to a channel.
    Subscribe,
    /// `unsubscribe` from a channel.
    Unsubscribe,
    /// `ping`, answered with `pong`.
    Ping,
    /// `refresh` the connection's token.
    Refresh,
    /// `presence`: who is subscribed to a channel.
    Presence,
    /// `welcome` (server).
    Welcome,
    /// `ack` (server).
    Ack,
    /// `error` (server).
    Error,
    /// `event` (server).
    Event,
    /// `pong` (server).
    Pong,
    /// `unsubscribed` (server): a subscription the server ended.
    Unsubscribed,
    /// `join` (server): a subject arrived in a presence channel.
    Join,
    /// `leave` (server): a subject left a presence channel.
    Leave,
    /// `subscribed` (server): a handler subscribed the connection to a
    /// channel with history; where the channel is.
    Subscribed,
}

impl ReservedType {
    /// Every reserved type.
    pub const ALL: [ReservedType; 14] = [
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Ping,
        Self::Refresh,
        Self::Presence,
        Self::Welcome,
        Self::Ack,
        Self::Error,
        Self::Event,
        Self::Pong,
        Self::Unsubscribed,
        Self::Join,
        Self::Leave,
        Self::Subscribed,
    ];

    /// The type on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Ping => "ping",
            Self::Refresh => "refresh",
            Self::Presence => "presence",
            Self::Welcome => "welcome",
            Self::Ack => "ack",
            Self::Error => "error",
            Self::Event => "event",
            Self::Pong => "pong",
            Self::Unsubscribed => "unsubscribed",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Subscribed => "subscribed",
        }
    }

    /// The reserved type named `t`, if it is one.
    pub fn parse(t: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == t)
    }

    /// Whether a client may send it (the others are server frames).
    pub fn is_client_request(self) -> bool {
        matches!(
            self,
            Self::Subscribe | Self::Unsubscribe | Self::Ping | Self::Refresh | Self::Presence
        )
    }
}

/// Whether `t` is reserved for the host: a [`ReservedType`] or anything
/// under `sluice.`.
pub fn is_reserved_type(t: &str) -> bool {
    ReservedType::parse(t).is_some() || t.starts_with("sluice.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_round_trip() {
        for r in ReservedType::ALL {
            assert_eq!(ReservedType::parse(r.as_str()), Some(r));
            assert!(is_reserved_type(r.as_str()));
        }
        assert!(is_reserved_type("sluice.anything"));
        assert!(!is_reserved_type("chat.send"));
        assert!(!ReservedType::Ack.is_client_request());
        assert!(ReservedType::Refresh.is_client_request());
    }
}
