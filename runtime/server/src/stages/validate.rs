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
            data: envelope.data.to_string(),
        },
    })
}
