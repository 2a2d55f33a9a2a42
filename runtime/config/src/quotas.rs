//! Per-tenant quotas on what a tenant can make the host hold
//! (`[tenants.<id>.quotas]`): one tenant's code, clients or management
//! token must never take what another tenant needs.
//!
//! Each quota bounds one shared resource for one tenant; the node's totals
//! (the sandbox's instance pool, the history a node keeps) are bounded on
//! their own, and under pressure a node takes back what is idle before it
//! refuses anyone (instances: the least recently used idle instance of the
//! tenant holding the most, so a tenant pays for its own growth first).
//! The defaults leave room for many tenants at their quota at once: a
//! tenant's default instance share is a twentieth of the default pool.
//!
//! Two resources have their quotas elsewhere, where they always were:
//! handler state (`[tenants.<id>.handlers.<h>.limits] max_state_keys` and
//! `max_state_bytes`, per tenant) and connections (`[tenants.<id>.limits]
//! max_connections`, `max_connections_per_subject`).

use serde::{Deserialize, Serialize};

/// Instances (idle and busy, over all of a tenant's handlers and
/// versions) a tenant may hold: a twentieth of the default pool.
pub const DEFAULT_QUOTA_INSTANCES: u32 = 50;
/// Bytes of compiled code a tenant's handlers may hold in memory.
pub const DEFAULT_QUOTA_COMPILED_BYTES: usize = 256 << 20;
/// Handlers a tenant may push through the management API.
pub const DEFAULT_QUOTA_PUSHED_HANDLERS: u32 = 16;
/// Channels with history a tenant may have at once.
pub const DEFAULT_QUOTA_HISTORY_CHANNELS: u32 = 10_000;
/// Bytes of channel history a tenant may keep.
pub const DEFAULT_QUOTA_HISTORY_BYTES: usize = 64 << 20;
/// Presence channels a tenant may have at once.
pub const DEFAULT_QUOTA_PRESENCE_CHANNELS: u32 = 10_000;
/// Members a tenant may have present, over all its presence channels.
pub const DEFAULT_QUOTA_PRESENCE_MEMBERS: u32 = 100_000;
/// Management API requests per second a tenant's token may make.
pub const DEFAULT_QUOTA_MANAGEMENT_REQUESTS_PER_SEC: u32 = 10;
/// Idempotency keys a tenant's requests may have remembered at once.
pub const DEFAULT_QUOTA_IDEMPOTENCY_KEYS: u32 = 100_000;

/// A tenant's quotas. Every field has a default; every value must be more
/// than zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Instances, idle and busy, over all the tenant's handlers and
    /// versions: past it the tenant's least recently used idle instance
    /// is dropped, or (all busy) the call waits like any call over
    /// `max_concurrency`, then `unavailable`.
    pub instances: u32,
    /// Bytes of compiled code of the tenant's handlers (every loaded
    /// version, and its handlers from the config file, which are never
    /// refused): a push that would pass it is refused (409 `quota`).
    pub compiled_bytes: usize,
    /// Handlers the tenant may push (versions of each: `[managed]
    /// max_versions`).
    pub pushed_handlers: u32,
    /// Channels keeping history at once: a publish that opens one more
    /// first drops the history of the tenant's least recently used channel
    /// (a client resuming there is told `recovered: false`), never another
    /// tenant's. Refusing the publish instead would stop a tenant whose
    /// rooms come and go once it reached the quota, until its oldest rooms
    /// expired; dropping the coldest history costs one recovery. In a
    /// fleet: the channel holding the tenant's oldest event is dropped.
    pub history_channels: u32,
    /// Bytes of history kept over all the tenant's channels (the events,
    /// and `HISTORY_CHANNEL_COST` per channel on one node): past it the
    /// least recently used channel's history is dropped first, and a
    /// channel over it on its own loses its oldest events. In a fleet it is
    /// the `max_bytes` of the tenant's JetStream stream: the tenant's
    /// oldest events go first, whatever their channel.
    pub history_bytes: usize,
    /// Presence channels at once: past it a subscribe is served without
    /// presence tracking for the channel (its `presence` says `truncated`,
    /// and no `join` or `leave` is sent for it).
    pub presence_channels: u32,
    /// Members present over all presence channels (a subject in two
    /// channels counts twice): past it a new member is not tracked, as
    /// past a channel's `max_presence_members`.
    pub presence_members: u32,
    /// Management API requests per second with the tenant's token (429
    /// past it).
    pub management_requests_per_sec: u32,
    /// Requests with idempotency keys remembered at once (each for
    /// `[tenants.<id>.limits] idempotency_window_secs`; one subject at
    /// most 1000 of them): past it a keyed request is refused with
    /// `too_many_keys` and `retry_after_ms`, and nothing runs.
    pub idempotency_keys: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            instances: DEFAULT_QUOTA_INSTANCES,
            compiled_bytes: DEFAULT_QUOTA_COMPILED_BYTES,
            pushed_handlers: DEFAULT_QUOTA_PUSHED_HANDLERS,
            history_channels: DEFAULT_QUOTA_HISTORY_CHANNELS,
            history_bytes: DEFAULT_QUOTA_HISTORY_BYTES,
            presence_channels: DEFAULT_QUOTA_PRESENCE_CHANNELS,
            presence_members: DEFAULT_QUOTA_PRESENCE_MEMBERS,
            management_requests_per_sec: DEFAULT_QUOTA_MANAGEMENT_REQUESTS_PER_SEC,
            idempotency_keys: DEFAULT_QUOTA_IDEMPOTENCY_KEYS,
        }
    }
}

impl Quotas {
    /// Every problem with these quotas (`at`: the table's name), against
    /// the node's instance pool.
    pub fn problems(&self, at: &str, pool_instances: u32, problems: &mut Vec<String>) {
        let zero = [
            ("instances", self.instances == 0),
            ("compiled_bytes", self.compiled_bytes == 0),
            ("pushed_handlers", self.pushed_handlers == 0),
            ("history_channels", self.history_channels == 0),
            ("history_bytes", self.history_bytes == 0),
            ("presence_channels", self.presence_channels == 0),
            ("presence_members", self.presence_members == 0),
            (
                "management_requests_per_sec",
                self.management_requests_per_sec == 0,
            ),
            ("idempotency_keys", self.idempotency_keys == 0),
        ];
        for (name, is_zero) in zero {
            if is_zero {
                problems.push(format!("{at}.quotas.{name} must be greater than zero"));
            }
        }
        if self.instances > pool_instances {
            problems.push(format!(
                "{at}.quotas.instances: {} is more than the node's whole pool ([sandbox] pool_instances = {pool_instances})",
                self.instances
            ));
        }
    }

    /// One line per quota, for `sluice check`: its key, its value, and
    /// what happens to the tenant past it.
    pub fn explain(&self) -> Vec<String> {
        let mib = |b: usize| {
            if b.is_multiple_of(1 << 20) {
                format!("{b} ({} MiB)", b >> 20)
            } else {
                b.to_string()
            }
        };
        vec![
            format!(
                "quotas.instances = {}: instances of its handlers, idle and busy; past it its least recently used idle instance is dropped, or (all busy) a call waits one deadline, then `unavailable`",
                self.instances
            ),
            format!(
                "quotas.compiled_bytes = {}: compiled code of its handlers; a push past it is refused (409 `quota`)",
                mib(self.compiled_bytes)
            ),
            format!(
                "quotas.pushed_handlers = {}: handlers pushed through the management API; one more is refused (409 `quota`)",
                self.pushed_handlers
            ),
            format!(
                "quotas.history_channels = {}: channels keeping history; one more drops the history of its least recently used channel (a client resuming there: `recovered: false`)",
                self.history_channels
            ),
            format!(
                "quotas.history_bytes = {}: history over all its channels; past it its least recently used channel's history goes first (in a fleet: its oldest events)",
                mib(self.history_bytes)
            ),
            format!(
                "quotas.presence_channels = {}: channels with presence tracked; past it a subscribe is served without presence (`truncated`, no join/leave)",
                self.presence_channels
            ),
            format!(
                "quotas.presence_members = {}: members present over all channels; past it a new member is not tracked (`truncated`)",
                self.presence_members
            ),
            format!(
                "quotas.management_requests_per_sec = {}: management API requests a second with its token; past it 429 `rate_limited`; one push in flight (429 `push_in_flight`)",
                self.management_requests_per_sec
            ),
            format!(
                "quotas.idempotency_keys = {}: requests with idempotency keys remembered at once (one subject at most 1000); past it a keyed request is refused `too_many_keys` with `retry_after_ms`, nothing run",
                self.idempotency_keys
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_names_every_key_with_its_value() {
        let q = Quotas {
            history_bytes: 3 << 20,
            ..Quotas::default()
        };
        let lines = q.explain();
        let keys = toml::Value::try_from(&q).expect("serializes");
        let keys = keys.as_table().expect("a table");
        assert_eq!(lines.len(), keys.len(), "{lines:?}");
        for (key, value) in keys {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("quotas.{key} = ")))
                .unwrap_or_else(|| panic!("{key} explained: {lines:?}"));
            assert!(line.contains(&value.to_string()), "{line}");
        }
        assert!(
            lines.iter().any(|l| l.contains("3145728 (3 MiB)")),
            "{lines:?}"
        );
    }

    #[test]
    fn defaults_are_valid_and_a_twentieth_of_the_pool() {
        let mut p = Vec::new();
        Quotas::default().problems("tenants.t", crate::limits::DEFAULT_POOL_INSTANCES, &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            DEFAULT_QUOTA_INSTANCES * 20,
            crate::limits::DEFAULT_POOL_INSTANCES
        );
    }

    #[test]
    fn every_zero_and_an_instance_share_over_the_pool_are_reported_at_once() {
        let q: Quotas = toml::from_str("instances = 2000\nhistory_bytes = 0\npushed_handlers = 0")
            .expect("parses");
        let mut p = Vec::new();
        q.problems("tenants.t", 1000, &mut p);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("quotas.history_bytes must be greater than zero"))
        );
        assert!(
            p.iter()
                .any(|m| m.contains("quotas.instances: 2000 is more than the node's whole pool"))
        );
        assert!(
            toml::from_str::<Quotas>("instance = 1").is_err(),
            "unknown fields are refused"
        );
    }
}
