//! The checklist: one [`Check`] per requirement, its status and its
//! evidence, rendered for people or as JSON for CI.

use std::fmt::Write as _;

use serde::Serialize;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The endpoint does what the requirement asks.
    Pass,
    /// It does not: the exit status is non-zero.
    Fail,
    /// The check does not apply (e.g. TLS checks on a `ws://` URL, or a
    /// check derived from a `--token` that was not given).
    NotApplicable,
    /// The probe could not decide within its bounds; the evidence says why.
    CouldNotTell,
    /// Worth knowing, not a failure (e.g. compression is negotiated).
    Note,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NotApplicable => "N/A ",
            Self::CouldNotTell => "??? ",
            Self::Note => "NOTE",
        }
    }
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable identifier, e.g. `auth.alg_none` (what CI scripts match on).
    pub id: &'static str,
    /// The group: Transport, Handshake authentication, Origin, ...
    pub group: &'static str,
    /// What is checked, in a sentence.
    pub title: &'static str,
    /// The OWASP WebSocket Security Cheat Sheet section and ASVS 5.0
    /// requirements it covers.
    pub refs: &'static str,
    /// The verdict.
    pub status: Status,
    /// What the probe sent.
    pub sent: String,
    /// What came back.
    pub received: String,
    /// Why the verdict follows from it, and what to do about a failure.
    pub detail: String,
}

impl Check {
    /// A check of `spec` with a verdict and its evidence.
    pub fn new(
        spec: Spec,
        status: Status,
        sent: impl Into<String>,
        received: impl Into<String>,
    ) -> Self {
        Self {
            id: spec.id,
            group: spec.group,
            title: spec.title,
            refs: spec.refs,
            status,
            sent: sent.into(),
            received: received.into(),
            detail: String::new(),
        }
    }

    /// Add an explanation.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// A check that did not run, for `reason`.
    pub fn skipped(spec: Spec, status: Status, reason: impl Into<String>) -> Self {
        Self::new(spec, status, "nothing", "nothing").detail(reason)
    }
}

/// What a check is, independent of its outcome.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// See [`Check::id`].
    pub id: &'static str,
    /// See [`Check::group`].
    pub group: &'static str,
    /// See [`Check::title`].
    pub title: &'static str,
    /// See [`Check::refs`].
    pub refs: &'static str,
}

/// Counts per status.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    /// Checks that passed.
    pub pass: usize,
    /// Checks that failed.
    pub fail: usize,
    /// Checks that did not apply.
    pub not_applicable: usize,
    /// Checks the probe could not decide.
    pub could_not_tell: usize,
    /// Notes.
    pub note: usize,
}

/// The whole audit.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The URL probed.
    pub url: String,
    /// Whether the active checks ran.
    pub active: bool,
    /// Every check, in checklist order.
    pub checks: Vec<Check>,
    /// Counts per status.
    pub summary: Summary,
}

impl Report {
    /// A report of `checks`, with the counts.
    pub fn new(url: String, active: bool, checks: Vec<Check>) -> Self {
        let mut summary = Summary::default();
        for c in &checks {
            *match c.status {
                Status::Pass => &mut summary.pass,
                Status::Fail => &mut summary.fail,
                Status::NotApplicable => &mut summary.not_applicable,
                Status::CouldNotTell => &mut summary.could_not_tell,
                Status::Note => &mut summary.note,
            } += 1;
        }
        Self {
            url,
            active,
            checks,
            summary,
        }
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// Whether any check failed (the exit status is then 1).
    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    /// The readable checklist. Everything in it that came from the
    /// server (or the command line) is [`escaped`]: an answer cannot move
    /// the cursor, recolour or hide a line.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "sluice probe {}", escaped(&self.url));
        let mut group = "";
        for c in &self.checks {
            if c.group != group {
                group = c.group;
                let _ = writeln!(out, "\n{group}");
            }
            let _ = writeln!(out, "  {}  {}  ({})", c.status.label(), c.title, c.id);
            let _ = writeln!(out, "        covers: {}", c.refs);
            if c.sent != "nothing" || c.received != "nothing" {
                let _ = writeln!(out, "        sent:   {}", escaped(&c.sent));
                let _ = writeln!(out, "        got:    {}", escaped(&c.received));
            }
            if !c.detail.is_empty() {
                let _ = writeln!(out, "        why:    {}", escaped(&c.detail));
            }
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "\n{} passed, {} failed, {} could not tell, {} not applicable, {} notes{}",
            s.pass,
            s.fail,
            s.could_not_tell,
            s.not_applicable,
            s.note,
            if self.active {
                ""
            } else {
                " (message validation and flooding need --active)"
            }
        );
        out
    }
}

/// `text` safe to print on a terminal: control characters (C0, DEL, C1:
/// the escape sequences that move the cursor, erase or recolour lines)
/// and the invisible or direction-changing format characters are written
/// as `\u{..}`.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        id: "x.y",
        group: "G",
        title: "t",
        refs: "r",
    };

    #[test]
    fn a_failed_check_fails_the_report_and_a_note_does_not() {
        let ok = Report::new(
            "wss://h/".into(),
            false,
            vec![
                Check::new(SPEC, Status::Pass, "a", "b"),
                Check::new(SPEC, Status::Note, "a", "b"),
                Check::new(SPEC, Status::CouldNotTell, "a", "b"),
            ],
        );
        assert!(!ok.failed());
        let bad = Report::new(
            "wss://h/".into(),
            true,
            vec![Check::new(SPEC, Status::Fail, "a", "b")],
        );
        assert!(bad.failed());
        assert_eq!(bad.summary.fail, 1);
        let json = serde_json::to_value(&bad).unwrap_or_default();
        assert_eq!(json["checks"][0]["status"], "fail");
        assert!(bad.human().contains("FAIL  t  (x.y)"));
    }

    #[test]
    fn what_the_server_sent_cannot_hide_a_failed_check() {
        // An answer that moves the cursor up a line, erases it and writes
        // a PASS over the FAIL above, then hides text behind a
        // right-to-left override.
        let hostile = "HTTP/1.1 101\u{1b}[1A\u{1b}[2K  PASS  \u{202e}ssap\u{9b}2J\r\n";
        let report = Report::new(
            "wss://h/".into(),
            false,
            vec![Check::new(SPEC, Status::Fail, "a request", hostile).detail(hostile)],
        );
        let out = report.human();
        assert!(out.contains("FAIL  t  (x.y)"));
        assert!(
            !out.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}[1A"), "{out}");
        assert!(out.contains("\\u{202e}"), "{out}");
        assert_eq!(escaped("plain: ok"), "plain: ok");
    }
}
