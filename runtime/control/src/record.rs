//! A pushed handler's record: its versions (digest, size, who pushed it,
//! its verification report) and its routing, kept as JSON in the store.

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// How a push or a promote routes the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Every connection (the previous stable is kept for a rollback).
    Stable,
    /// A percentage of connections, each sticking to its version.
    Canary,
    /// A rehearsal beside stable on every message; never applied.
    Shadow,
    /// Kept, not serving.
    None,
}

/// One pushed handler.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The number the next push gets.
    pub next_version: u32,
    /// Versions kept, oldest first.
    pub versions: Vec<VersionInfo>,
    /// What serves.
    pub routing: Routing,
    /// Earlier stable versions, most recent last (what a rollback returns to).
    pub stable_history: Vec<u32>,
}

/// One version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Its number.
    pub version: u32,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// Bytes.
    pub size: usize,
    /// When it was pushed, ms since the Unix epoch.
    pub pushed_at_ms: u64,
    /// Who pushed it (`operator`, `tenant:<id>`).
    pub pushed_by: String,
    /// Its verification report.
    pub report: Report,
}

/// Which versions serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Every connection not in the canary.
    pub stable: Option<u32>,
    /// A share of connections.
    pub canary: Option<Canary>,
    /// Rehearsed beside stable, never applied.
    pub shadow: Option<u32>,
}

/// A canary version and its share of connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The version.
    pub version: u32,
    /// Percent of connections, 0-100.
    pub percent: u8,
}

impl Routing {
    /// Every version routed, each once.
    pub fn versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [self.stable, self.canary.map(|c| c.version), self.shadow]
            .into_iter()
            .flatten()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How `version` serves, if it does.
    pub fn stage_of(&self, version: u32) -> Option<Stage> {
        if self.stable == Some(version) {
            Some(Stage::Stable)
        } else if self.canary.is_some_and(|c| c.version == version) {
            Some(Stage::Canary)
        } else if self.shadow == Some(version) {
            Some(Stage::Shadow)
        } else {
            None
        }
    }
}

impl Record {
    /// A handler with no versions yet.
    pub fn new(tenant: &str, name: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            next_version: 1,
            versions: Vec::new(),
            routing: Routing::default(),
            stable_history: Vec::new(),
        }
    }

    /// A version by number.
    pub fn version(&self, version: u32) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Route `version` as `stage` (`percent` for a canary).
    pub fn route(&mut self, version: u32, stage: Stage, percent: Option<u8>) -> Result<(), String> {
        if self.version(version).is_none() {
            return Err(format!("{} has no version {version}", self.name));
        }
        let r = &mut self.routing;
        let not_stable = |r: &Routing, what: &str| match r.stable {
            None => Err(format!(
                "{what} needs a stable version to run beside: promote one to stable first"
            )),
            Some(s) if s == version => Err(format!("v{version} is already stable")),
            Some(_) => Ok(()),
        };
        match stage {
            Stage::Stable => {
                if r.stable == Some(version) {
                    return Ok(());
                }
                if let Some(previous) = r.stable {
                    self.stable_history.retain(|v| *v != previous);
                    self.stable_history.push(previous);
                }
                r.stable = Some(version);
                if r.canary.is_some_and(|c| c.version == version) {
                    r.canary = None;
                }
                if r.shadow == Some(version) {
                    r.shadow = None;
                }
            }
            Stage::Canary => {
                not_stable(r, "a canary")?;
                let Some(percent) = percent.filter(|p| *p <= 100) else {
                    return Err("a canary needs a percentage, 0-100".into());
                };
                r.canary = Some(Canary { version, percent });
                if r.shadow == Some(version) {
                    r.shadow = None;
                }
            }
            Stage::Shadow => {
                not_stable(r, "a shadow")?;
                r.shadow = Some(version);
                if r.canary.is_some_and(|c| c.version == version) {
                    r.canary = None;
                }
            }
            Stage::None => {
                if r.stable == Some(version) {
                    return Err(format!(
                        "v{version} is stable: roll back or promote another version instead"
                    ));
                }
                if r.canary.is_some_and(|c| c.version == version) {
                    r.canary = None;
                }
                if r.shadow == Some(version) {
                    r.shadow = None;
                }
            }
        }
        Ok(())
    }

    /// Make the previous stable version (or `to`) stable again; the canary
    /// and the shadow stop.
    pub fn rollback(&mut self, to: Option<u32>) -> Result<(), String> {
        let target = match to {
            Some(v) if self.version(v).is_some() => v,
            Some(v) => return Err(format!("{} has no version {v}", self.name)),
            None => loop {
                match self.stable_history.pop() {
                    Some(v) if self.version(v).is_some() && Some(v) != self.routing.stable => {
                        break v;
                    }
                    Some(_) => {}
                    None => {
                        return Err(format!(
                            "{} has no earlier stable version to roll back to",
                            self.name
                        ));
                    }
                }
            },
        };
        self.stable_history.retain(|v| *v != target);
        self.routing = Routing {
            stable: Some(target),
            canary: None,
            shadow: None,
        };
        Ok(())
    }

    /// Remove a version that does not serve.
    pub fn remove_version(&mut self, version: u32) -> Result<(), String> {
        if self.version(version).is_none() {
            return Err(format!("{} has no version {version}", self.name));
        }
        if let Some(stage) = self.routing.stage_of(version) {
            return Err(format!(
                "v{version} serves as {}: route it away first",
                serde_json::to_value(stage)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        self.versions.retain(|v| v.version != version);
        self.stable_history.retain(|v| *v != version);
        Ok(())
    }

    /// Forget the oldest versions that do not serve until at most `max`
    /// are kept; returns their digests.
    pub fn forget_past(&mut self, max: usize) -> Vec<String> {
        let mut forgotten = Vec::new();
        while self.versions.len() > max {
            let Some(i) = self
                .versions
                .iter()
                .position(|v| self.routing.stage_of(v.version).is_none())
            else {
                break;
            };
            let v = self.versions.remove(i);
            self.stable_history.retain(|x| *x != v.version);
            forgotten.push(v.digest);
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> Record {
        let mut r = Record::new("t", "h");
        for v in 1..=n {
            r.versions.push(VersionInfo {
                version: v,
                digest: format!("d{v}"),
                size: 1,
                pushed_at_ms: 0,
                pushed_by: "operator".into(),
                report: Report::default(),
            });
            r.next_version = v + 1;
        }
        r
    }

    #[test]
    fn promote_canary_shadow_and_rollback_move_versions_as_documented() {
        let mut r = record(3);
        assert!(
            r.route(2, Stage::Canary, Some(10)).is_err(),
            "no stable yet"
        );
        r.route(1, Stage::Stable, None).unwrap();
        r.route(2, Stage::Canary, Some(50)).unwrap();
        r.route(3, Stage::Shadow, None).unwrap();
        assert_eq!(r.routing.versions(), vec![1, 2, 3]);
        assert!(r.route(2, Stage::Canary, Some(101)).is_err());
        assert!(r.remove_version(2).is_err(), "a canary serves");
        r.route(2, Stage::Stable, None).unwrap();
        assert_eq!(
            r.routing,
            Routing {
                stable: Some(2),
                canary: None,
                shadow: Some(3)
            }
        );
        r.rollback(None).unwrap();
        assert_eq!(
            r.routing,
            Routing {
                stable: Some(1),
                canary: None,
                shadow: None
            }
        );
        assert!(r.rollback(None).is_err(), "nothing earlier than v1");
        r.rollback(Some(3)).unwrap();
        assert_eq!(r.routing.stable, Some(3));
        assert!(r.route(3, Stage::None, None).is_err(), "stable cannot stop");
    }

    #[test]
    fn only_versions_that_do_not_serve_are_forgotten() {
        let mut r = record(5);
        r.route(1, Stage::Stable, None).unwrap();
        r.route(2, Stage::Shadow, None).unwrap();
        let forgotten = r.forget_past(3);
        assert_eq!(forgotten, vec!["d3".to_owned(), "d4".to_owned()]);
        assert_eq!(
            r.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
    }
}
