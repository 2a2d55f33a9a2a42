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

/// Where a share reads this node's members from: the node's presence.
pub trait PresenceSource: Send + Sync + 'static {
    /// This node's members of a channel now (`None`: it has none).
    fn entry(&self, key: &ChannelKey) -> Option<PresenceEntry>;
}

/// Presence shared with other nodes.
pub trait PresenceShare: Send + Sync + 'static {
    /// Whether other nodes exist to share with (when false, nothing is
    /// reported and nothing is ever present elsewhere).
    fn shared(&self) -> bool;
    /// Where this node's members come from (called once, when the node's
    /// presence is made).
    fn attach(&self, source: std::sync::Weak<dyn PresenceSource>);
    /// This node's members of a channel changed. The share reads the
    /// channel's entry from its source when it writes next, so any number
    /// of changes in between cost one read and one write, and nothing is
    /// copied or serialized on the joining connection's path.
    fn changed(&self, key: &ChannelKey);
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
    fn attach(&self, _source: std::sync::Weak<dyn PresenceSource>) {}
    fn changed(&self, _key: &ChannelKey) {}
    fn elsewhere(&self, _key: &ChannelKey) -> Vec<PresenceEntry> {
        Vec::new()
    }
    fn present_elsewhere(&self, _key: &ChannelKey, _subject: &str) -> bool {
        false
    }
}
