//! The message path, one stage per module, each with one typed output:
//!
//! ```text
//! text ─decode─> Request ─authorize─> Authorized ─validate─> Validated
//!      ─call─> Proposed ─effects::authorize─> Vec<Effect> ─(session applies)
//! ```
//!
//! Every stage refuses with a [`sluice_protocol::Rejection`]; the session
//! answers it (one mapping to the wire) and keeps the connection usable
//! unless the rejection is a close.

pub mod authorize;
pub mod call;
pub mod decode;
pub mod effects;
pub mod validate;
