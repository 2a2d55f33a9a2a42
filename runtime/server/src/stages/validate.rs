//! Validate: the route's JSON Schema (compiled once at load) over `data`.
//! The output is the sandbox's message: the handler only ever sees data
//! that passed.

use sluice_protocol::Rejection;
use sluice_sandbox::Message;

use crate::tenant::RouteHandler;

use super::authorize::Authorized;

/// A message that passed its route's schema, ready for the handler.
pub struct Validated {
    /// The handler of the route.
    pub handler: RouteHandler,
    /// The message as the handler receives it.
    pub message: Message,
}

/// Check `data` against the route's schema.
pub fn validate(authorized: Authorized<'_>) -> Result<Validated, Rejection> {
    let Authorized { route, envelope } = authorized;
    if let Some(schema) = &route.schema {
        schema.check(&envelope.data)?;
    }
    Ok(Validated {
        handler: route.handler.clone(),
        message: Message {
            route: envelope.kind,
            channel: envelope.channel,
            // Re-serialized from the checked value, never the client's text:
            // the handler parses exactly what the schema saw (duplicate
            // keys, escapes and number forms cannot differ between the
            // two parsers). `to_string` writes straight into a buffer;
            // `Display` went through `fmt::Write` a piece at a time.
            data: serde_json::to_string(&envelope.data)
                .unwrap_or_else(|_| envelope.data.to_string()),
        },
    })
}
