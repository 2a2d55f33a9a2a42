//! Call the handler under its limits. The output is what it proposes: its
//! actions, not yet authorized.

use sluice_protocol::Rejection;
use sluice_sandbox::{Action, CallErrorKind, Connection, Handler};

use super::validate::Validated;
use crate::rejection;

/// Which export produced a set of actions (the sandbox's [`sluice_sandbox::Export`]).
pub use sluice_sandbox::Export as Phase;

/// What a handler proposes.
pub struct Proposed {
    /// The handler that proposed it.
    pub handler: Handler,
    /// Which export.
    pub phase: Phase,
    /// Its actions, in order.
    pub actions: Vec<Action>,
}

/// Call `on-message`. A call whose state commit lost a race with another
/// node (cluster mode) wrote nothing and runs once more, on fresh state.
pub async fn call(validated: Validated, conn: &Connection) -> Result<Proposed, Rejection> {
    let Validated { handler, message } = validated;
    let mut result = handler.on_message(conn, &message).await;
    if matches!(&result, Err(e) if e.kind == CallErrorKind::Conflict) {
        result = handler.on_message(conn, &message).await;
    }
    match result {
        Ok(outcome) => Ok(Proposed {
            handler,
            phase: Phase::Message,
            actions: outcome.actions,
        }),
        Err(e) => Err(rejection::for_call(&e.kind)),
    }
}

/// Call `on-connect` or `on-disconnect` of one handler. A failure proposes
/// nothing (it is logged and counted by the sandbox).
pub async fn lifecycle(handler: &Handler, phase: Phase, conn: &Connection) -> Option<Proposed> {
    let result = match phase {
        Phase::Connect => handler.on_connect(conn).await,
        Phase::Disconnect | Phase::Message => handler.on_disconnect(conn).await,
    };
    // (`on-message` goes through [`call`]: it needs a validated message.)
    match result {
        Ok(outcome) => Some(Proposed {
            handler: handler.clone(),
            phase,
            actions: outcome.actions,
        }),
        Err(e) => {
            if phase == Phase::Connect && e.kind.is_handler_failure() {
                tracing::debug!(tenant = %handler.spec().tenant, handler = %handler.spec().name, kind = e.kind.name(), "on-connect failed");
            }
            None
        }
    }
}
