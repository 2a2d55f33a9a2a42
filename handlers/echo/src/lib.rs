//! Echo: replies with the message's data, unchanged. The smallest useful
//! handler, and the one the sandbox microbenchmark calls.

use sluice_guest_sdk::{Actions, Connection, Handler, HandlerResult, Message};

struct Echo;

impl Handler for Echo {
    fn on_message(_conn: &Connection, msg: &Message) -> HandlerResult {
        Ok(Actions::new().reply_raw(msg.data.clone()))
    }
}

sluice_guest_sdk::export_handler!(Echo);
