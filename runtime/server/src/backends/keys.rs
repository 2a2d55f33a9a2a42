//! The keys every backend is addressed by: a channel of a tenant, the
//! connections of a subject of a tenant, one receiving connection. The
//! tenant is always the first part of a typed key, never joined into a
//! string, so nothing one tenant names can reach another's.

use std::sync::Arc;

use crate::outbox::Outbox;

/// A channel of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The tenant id.
    pub tenant: Arc<str>,
    /// The channel's name (already valid: `sluice_protocol::is_valid_channel`).
    pub channel: Box<str>,
}

impl ChannelKey {
    /// The key of `channel` of `tenant`.
    pub fn new(tenant: &Arc<str>, channel: &str) -> Self {
        Self {
            tenant: tenant.clone(),
            channel: channel.into(),
        }
    }
}

/// The connections of one subject of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectKey {
    /// The tenant id.
    pub tenant: Arc<str>,
    /// The subject (`sub` of the token).
    pub subject: Box<str>,
}

impl SubjectKey {
    /// The key of `subject` of `tenant`.
    pub fn new(tenant: &Arc<str>, subject: &str) -> Self {
        Self {
            tenant: tenant.clone(),
            subject: subject.into(),
        }
    }
}

/// One receiving connection: its id and its outbound queue.
#[derive(Clone, Debug)]
pub struct Member {
    /// The connection id.
    pub id: u64,
    /// Its queue.
    pub outbox: Outbox,
}
