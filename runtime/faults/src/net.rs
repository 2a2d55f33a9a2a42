//! The network: every node and NATS server in its own network namespace,
//! joined to one bridge in the host's namespace by a veth pair; the
//! workload's clients run in the host's namespace and reach the nodes
//! through the bridge. Everything is created by the suite and removed on
//! every way out: at the end of a run, when it fails, and (for a run that
//! was killed) by the next run, which removes what a dead run left.
//!
//! Names carry the run's *slot* (a number claimed with a file holding the
//! runner's pid): namespaces `sf{slot}-{member}`, the bridge `sfb{slot}`,
//! host-side veths `sf{slot}{member}`, addresses `10.213.{slot}.0/24`.
//!
//! Faults on links are iptables rules in the member's namespace, in two
//! chains of its own (`SF_IN`, `SF_OUT`) that healing flushes; a slow link
//! is `tc netem` where the kernel has it, and otherwise the suite's own
//! delay line ([`crate::delay_line`]) behind an NFQUEUE rule.

use std::net::Ipv4Addr;

use anyhow::Context as _;

pub use crate::command::{in_ns, sh};
use crate::slots::{SlotLock, claim, clean_slot, clean_stale};

/// One namespace on the bridge.
#[derive(Debug, Clone)]
pub struct Member {
    /// Short name (`n1`, `q2`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The veth end on the bridge (host side).
    pub host_veth: String,
}

/// The suite's network for one run.
#[derive(Debug)]
pub struct Net {
    /// The claimed slot.
    pub slot: u32,
    /// The bridge.
    pub bridge: String,
    /// The bridge's (the clients') address.
    pub host_ip: Ipv4Addr,
    /// Namespaces.
    pub members: Vec<Member>,
    /// Whether the kernel has `tc netem`.
    pub netem: bool,
}

impl Net {
    /// Remove what dead runs left, claim a free slot, and build a
    /// namespace per name in `names`, each with an address on the bridge.
    /// The first two happen under a lock shared by every run on the machine,
    /// so that no run mistakes another's half-built slot for a dead one.
    pub async fn create(names: &[&str]) -> anyhow::Result<Self> {
        let slot = {
            let _lock = SlotLock::take().await?;
            let cleaned = clean_stale().await?;
            if !cleaned.is_empty() {
                eprintln!("sluice-faults: removed what dead runs left in slots {cleaned:?}");
            }
            claim()?
        };
        let net = match Self::build(slot, names).await {
            Ok(n) => n,
            Err(e) => {
                clean_slot(slot).await;
                return Err(e);
            }
        };
        Ok(net)
    }

    async fn build(slot: u32, names: &[&str]) -> anyhow::Result<Self> {
        let bridge = format!("sfb{slot}");
        let host_ip = Ipv4Addr::new(10, 213, slot as u8, 1);
        sh("ip", &["link", "add", &bridge, "type", "bridge"]).await?;
        sh(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &bridge],
        )
        .await?;
        sh("ip", &["link", "set", &bridge, "up"]).await?;
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = format!("sf{slot}-{name}");
            let ip = Ipv4Addr::new(10, 213, slot as u8, 10 + i as u8);
            let host_veth = format!("sf{slot}{name}");
            sh("ip", &["netns", "add", &ns]).await?;
            // A veth of a dead run can outlive its namespace for a while
            // (until its last process is reaped): never trip over it.
            let _ = sh("ip", &["link", "del", &host_veth]).await;
            sh(
                "ip",
                &[
                    "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )
            .await?;
            sh("ip", &["link", "set", &host_veth, "master", &bridge, "up"]).await?;
            in_ns(
                &ns,
                "ip",
                &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )
            .await?;
            in_ns(&ns, "ip", &["link", "set", "eth0", "up"]).await?;
            in_ns(&ns, "ip", &["link", "set", "lo", "up"]).await?;
            for (chain, hook) in [("SF_IN", "INPUT"), ("SF_OUT", "OUTPUT")] {
                in_ns(&ns, "iptables", &["-N", chain]).await?;
                in_ns(&ns, "iptables", &["-A", hook, "-j", chain]).await?;
            }
            members.push(Member {
                name: (*name).to_owned(),
                ns,
                ip,
                host_veth,
            });
        }
        let netem = match members.first() {
            Some(m) => {
                let probe = in_ns(
                    &m.ns,
                    "tc",
                    &[
                        "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
                    ],
                )
                .await;
                let _ = in_ns(&m.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]).await;
                probe.is_ok()
            }
            None => false,
        };
        Ok(Self {
            slot,
            bridge,
            host_ip,
            members,
            netem,
        })
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> anyhow::Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no member {name}"))
    }

    /// Cut `member` off from every address in `from`, both ways.
    pub async fn partition(&self, member: &Member, from: &[Ipv4Addr]) -> anyhow::Result<()> {
        for ip in from {
            let ip = ip.to_string();
            in_ns(
                &member.ns,
                "iptables",
                &["-A", "SF_IN", "-s", &ip, "-j", "DROP"],
            )
            .await?;
            in_ns(
                &member.ns,
                "iptables",
                &["-A", "SF_OUT", "-d", &ip, "-j", "DROP"],
            )
            .await?;
        }
        Ok(())
    }

    /// Delay and lose packets on `member`'s link, both ways: with netem
    /// when the kernel has it, otherwise through an NFQUEUE delay line.
    pub async fn slow(
        &self,
        member: &Member,
        delay_ms: u64,
        loss_percent: u32,
    ) -> anyhow::Result<Option<crate::delay_line::DelayLine>> {
        if self.netem {
            let delay = format!("{delay_ms}ms");
            let loss = format!("{loss_percent}%");
            let args = [
                "root",
                "netem",
                "delay",
                delay.as_str(),
                "loss",
                loss.as_str(),
            ];
            let mut inner = vec!["qdisc", "replace", "dev", "eth0"];
            inner.extend_from_slice(&args);
            in_ns(&member.ns, "tc", &inner).await?;
            let mut outer = vec!["qdisc", "replace", "dev", member.host_veth.as_str()];
            outer.extend_from_slice(&args);
            sh("tc", &outer).await?;
            return Ok(None);
        }
        let queue = 100
            + self
                .members
                .iter()
                .position(|m| m.name == member.name)
                .unwrap_or(0) as u16;
        let line = crate::delay_line::DelayLine::start(&member.ns, queue, delay_ms, loss_percent)?;
        let q = queue.to_string();
        for (chain, dir) in [("SF_IN", "-i"), ("SF_OUT", "-o")] {
            in_ns(
                &member.ns,
                "iptables",
                &[
                    "-A",
                    chain,
                    dir,
                    "eth0",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &q,
                    "--queue-bypass",
                ],
            )
            .await?;
        }
        Ok(Some(line))
    }

    /// Take `member`'s link down (`up` false) or up.
    pub async fn link(&self, member: &Member, up: bool) -> anyhow::Result<()> {
        in_ns(
            &member.ns,
            "ip",
            &["link", "set", "eth0", if up { "up" } else { "down" }],
        )
        .await
        .map(drop)
    }

    /// Undo every link fault on `member`.
    pub async fn heal(&self, member: &Member) -> anyhow::Result<()> {
        for chain in ["SF_IN", "SF_OUT"] {
            in_ns(&member.ns, "iptables", &["-F", chain]).await?;
        }
        if self.netem {
            let _ = in_ns(&member.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]).await;
            let _ = sh("tc", &["qdisc", "del", "dev", &member.host_veth, "root"]).await;
        }
        self.link(member, true).await
    }

    /// Remove everything.
    pub async fn destroy(&self) {
        clean_slot(self.slot).await;
    }
}
