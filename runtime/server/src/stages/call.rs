//! Call the handler under its limits. The output is what it proposes: its
//! actions, not yet authorized.

use sluice_protocol::{ErrorCode, Rejection};
use sluice_sandbox::{
    Action, Attach, CallError, CallErrorKind, CallOutcome, Connection, Export, Handler, Message,
};

use super::validate::Validated;
use crate::rejection;
use crate::slot::Picked;
use crate::tenant::RouteHandler;

/// What a handler proposes.
pub struct Proposed {
    /// The handler that proposed it.
    pub handler: Handler,
    /// Which export proposed it.
    pub export: Export,
    /// Its actions, in order.
    pub actions: Vec<Action>,
    /// Whether the record `attach` made was committed with the call's
    /// state, in one transaction (see [`call`]).
    pub attached: bool,
}

/// Call `on-message`. A call whose state commit lost a race with another
/// node (cluster mode) wrote nothing and runs once more, on fresh state.
/// A pushed handler runs on the version the connection is routed to; with
/// a shadow version, a rehearsal of the message runs on it first (reading
/// the same state stable then reads), and the two outcomes are compared.
///
/// `attach` (a message with an idempotency key): the record it makes from
/// the actions is committed with the call's state writes, atomically, when
/// the state store can (`Proposed::attached`).
pub async fn call(
    validated: Validated,
    conn: &Connection,
    attach: Option<Attach<'_>>,
) -> Result<Proposed, Rejection> {
    let Validated {
        handler: route_handler,
        message,
    } = validated;
    let (handler, shadow) = match &route_handler {
        RouteHandler::Configured(h) => (h.clone(), None),
        RouteHandler::Pushed(slot) => match slot.pick(conn.id) {
            Some(Picked {
                handler, shadow, ..
            }) => (handler, shadow.map(|s| (slot, s))),
            None => {
                return Err(Rejection::error(
                    ErrorCode::Unavailable,
                    "no version of this handler is serving",
                ));
            }
        },
    };
    let rehearsal = match &shadow {
        Some((_, shadow)) => Some(shadow.rehearse(Export::Message, conn, &message).await),
        None => None,
    };
    let mut result = on_message(&handler, conn, &message, attach).await;
    if matches!(&result, Err(e) if e.kind == CallErrorKind::Conflict) {
        result = on_message(&handler, conn, &message, attach).await;
    }
    if let (Some((slot, _)), Some(rehearsal)) = (shadow, rehearsal) {
        slot.compare_shadow(&message.route, &result, &rehearsal);
    }
    match result {
        Ok(outcome) => Ok(Proposed {
            handler,
            export: Export::Message,
            actions: outcome.actions,
            attached: outcome.attached,
        }),
        Err(e) => Err(rejection::for_call(&e.kind)),
    }
}

/// `on-message`, with the record `attach` makes kept with the call's
/// writes when there is one.
async fn on_message(
    handler: &Handler,
    conn: &Connection,
    message: &Message,
    attach: Option<Attach<'_>>,
) -> Result<CallOutcome, CallError> {
    match attach {
        Some(attach) => handler.on_message_attached(conn, message, attach).await,
        None => handler.on_message(conn, message).await,
    }
}

/// The handler a lifecycle call of connection `conn_id` runs on: the
/// version of a pushed handler the connection is routed to.
pub fn lifecycle_handler(handler: &RouteHandler, conn_id: u64) -> Option<Handler> {
    match handler {
        RouteHandler::Configured(h) => Some(h.clone()),
        RouteHandler::Pushed(slot) => slot.pick(conn_id).map(|p| p.handler),
    }
}

/// Call `on-connect` or `on-disconnect` of one handler. A failure proposes
/// nothing (it is logged and counted by the sandbox).
pub async fn lifecycle(handler: &Handler, export: Export, conn: &Connection) -> Option<Proposed> {
    let result = match export {
        Export::Connect => handler.on_connect(conn).await,
        Export::Disconnect | Export::Message => handler.on_disconnect(conn).await,
    };
    // (`on-message` goes through [`call`]: it needs a validated message.)
    match result {
        Ok(outcome) => Some(Proposed {
            handler: handler.clone(),
            export,
            actions: outcome.actions,
            attached: false,
        }),
        Err(e) => {
            if export == Export::Connect && e.kind.is_handler_failure() {
                tracing::debug!(tenant = %handler.spec().tenant, handler = %handler.spec().name, kind = e.kind.name(), "on-connect failed");
            }
            None
        }
    }
}
