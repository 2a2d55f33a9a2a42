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
    /// Every problem, when a tenant was refused as invalid (422).
    pub problems: Vec<String>,
    /// What a tenant's token tried to change that only the operator may.
    pub fields: Vec<String>,
    /// On a conflict, the revision kept now (`Some(None)`: removed).
    pub revision: Option<Option<u64>>,
}

impl Refusal {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            report: None,
            problems: Vec::new(),
            fields: Vec::new(),
            revision: None,
        }
    }

    /// 422: the tenant has these problems (all of them).
    pub(crate) fn invalid(problems: Vec<String>) -> Self {
        Self {
            problems,
            ..Self::new(
                422,
                "invalid",
                "the tenant has problems (every one is listed in `problems`)",
            )
        }
    }

    /// With the fields that were refused.
    pub(crate) fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    /// With the revision kept now (a conflict).
    pub(crate) fn with_revision(mut self, current: Option<u64>) -> Self {
        self.revision = Some(current);
        self
    }
}
