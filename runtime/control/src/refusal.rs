//! Why the management API refused a change: its HTTP status, a code for
//! programs, a message for people, and the verification report when a push
//! failed it.

use crate::report::Report;

/// A change the API asked for could not be made: its HTTP status and why.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// A code for programs.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The verification report, when a push was refused by it.
    pub report: Option<Box<Report>>,
}

impl Refusal {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            report: None,
        }
    }
}
