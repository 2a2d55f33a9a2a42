//! The presence seam: where this node's members of a presence channel go,
//! and where other nodes' members come from. On one node nothing is shared
//! ([`NodeOnly`]); in a fleet, `sluice-fleet` shares them on JetStream KV.
//! Who is present on this node is always tracked by
//! [`crate::presence::Presence`], which answers from memory.

use serde_json::value::RawValue;

use super::keys::ChannelKey;

/// One member as a node reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reported {
    /// The subject.
    pub subject: String,
    /// Its connections on that node.
    pub connections: u32,
    /// Its exposed claims.
    pub claims: Box<RawValue>,
}

/// One node's members of one channel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    /// Its members.
    pub members: Vec<Reported>,
    /// Whether it had more than its cap.
    pub truncated: bool,
}

/// Presence shared with other nodes.
pub trait PresenceShare: Send + Sync + 'static {
    /// Whether other nodes exist to share with (when false, nothing is
    /// reported and nothing is ever present elsewhere).
    fn shared(&self) -> bool;
    /// This node's members of a channel changed (`None`: it has none).
    fn report(&self, key: &ChannelKey, entry: Option<PresenceEntry>);
    /// Other nodes' entries for a channel.
    fn elsewhere(&self, key: &ChannelKey) -> Vec<PresenceEntry>;
    /// Whether `subject` is present in a channel on another node.
    fn present_elsewhere(&self, key: &ChannelKey, subject: &str) -> bool;
}

/// One node: nothing is shared.
#[derive(Debug, Default)]
pub struct NodeOnly;

impl PresenceShare for NodeOnly {
    fn shared(&self) -> bool {
        false
    }
    fn report(&self, _key: &ChannelKey, _entry: Option<PresenceEntry>) {}
    fn elsewhere(&self, _key: &ChannelKey) -> Vec<PresenceEntry> {
        Vec::new()
    }
    fn present_elsewhere(&self, _key: &ChannelKey, _subject: &str) -> bool {
        false
    }
}
