//! Write [Sluice](https://example.invalid/sluice) handlers in Rust.
//!
//! A handler is a type that implements [`Handler`], exported with
//! [`export_handler!`], built for `wasm32-wasip2` (which produces a
//! WebAssembly component directly). The host calls it for every connection
//! event of its tenant, with input that has already been authenticated,
//! authorized, schema-validated and rate-limited; the handler answers with
//! [`Actions`] that the host authorizes again and applies.
//!
//! ```
//! use serde::Deserialize;
//! use sluice_guest_sdk::{Actions, Connection, Handler, HandlerError, HandlerResult, Message};
//!
//! #[derive(Deserialize)]
//! struct Greet {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     fn on_message(conn: &Connection, msg: &Message) -> HandlerResult {
//!         let greet: Greet = msg.data()?;
//!         if greet.name.is_empty() {
//!             return Err(HandlerError::reject("empty_name", "name must not be empty"));
//!         }
//!         let reply = serde_json::json!({ "hello": greet.name, "from": conn.principal.subject });
//!         Ok(Actions::new().reply(&reply))
//!     }
//! }
//!
//! sluice_guest_sdk::export_handler!(Greeter);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` from a crate
//! whose `[lib]` has `crate-type = ["cdylib"]`, then try it locally with
//! `sluice call target/wasm32-wasip2/release/greeter.wasm greet --data '{"name":"ada"}'`.
//!
//! Capabilities ([`state`], [`log`], [`clock`]) are imported only if the
//! handler uses them, and the host refuses to load a handler that imports a
//! capability its tenant's config does not grant.

extern crate self as sluice_guest_sdk;

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings generated from the `sluice:handler` WIT world (`wit/` at the top
/// of the repository). Use the re-exports at the crate root instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_sluice_world",
        default_bindings_module: "::sluice_guest_sdk::bindings",
        runtime_path: "::sluice_guest_sdk::__wit_bindgen::rt",
    });
}

use bindings::exports::sluice::handler::events;
pub use bindings::sluice::handler::types::{
    Action, CloseRequest, Connection, HandlerError, Message, Principal, Publish, Rejection,
    SendToSubject,
};

/// What a handler function returns: actions for the host, or an error.
pub type HandlerResult = Result<Actions, HandlerError>;

/// A tenant's handler. Only [`Handler::on_message`] is required.
///
/// The functions are associated functions (no `self`): a handler instance may
/// be reused across calls (isolation mode `reuse`) or created fresh for every
/// call (`fresh`), so keep state in [`state`], not in statics.
pub trait Handler {
    /// A connection of this tenant was accepted. Default: no actions.
    fn on_connect(conn: &Connection) -> HandlerResult {
        let _ = conn;
        Ok(Actions::new())
    }

    /// An authorized, schema-valid message arrived.
    fn on_message(conn: &Connection, msg: &Message) -> HandlerResult;

    /// A connection closed. Only `publish` and `send` actions are applied.
    /// Default: no actions.
    fn on_disconnect(conn: &Connection) -> HandlerResult {
        let _ = conn;
        Ok(Actions::new())
    }
}

/// Export a [`Handler`] as this component's `sluice:handler/events`.
///
/// Use it once per component, at the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        type __SluiceExportedHandler = $crate::Export<$handler>;
        $crate::bindings::__export_sluice_world!(__SluiceExportedHandler with_types_in $crate::bindings);
    };
}

/// Adapter from a [`Handler`] to the generated WIT export trait; used by
/// [`export_handler!`].
#[doc(hidden)]
pub struct Export<H>(PhantomData<H>);

impl<H: Handler> events::Guest for Export<H> {
    fn on_connect(conn: Connection) -> Result<Vec<Action>, HandlerError> {
        H::on_connect(&conn).and_then(Actions::into_wit)
    }

    fn on_message(conn: Connection, msg: Message) -> Result<Vec<Action>, HandlerError> {
        H::on_message(&conn, &msg).and_then(Actions::into_wit)
    }

    fn on_disconnect(conn: Connection) -> Result<Vec<Action>, HandlerError> {
        H::on_disconnect(&conn).and_then(Actions::into_wit)
    }
}

impl HandlerError {
    /// Refuse the message with a code the client sees (1 to 64 of
    /// `a-z 0-9 _ .`) and a short message.
    pub fn reject(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError::Reject(Rejection {
            code: code.into(),
            message: message.into(),
        })
    }

    /// An internal failure. The host logs `detail`; the client only sees
    /// `handler_failed`. Repeated failures quarantine the handler.
    pub fn fail(detail: impl Into<String>) -> Self {
        HandlerError::Fail(detail.into())
    }
}

/// The `invalid_data` message of [`Message::data`], whatever the data.
pub const INVALID_DATA_MESSAGE: &str = "data does not fit the expected shape";

impl Message {
    /// Deserialize the message's data. The host has validated it against the
    /// route's schema; if it still does not fit `T`, the client gets
    /// `invalid_data` with [`INVALID_DATA_MESSAGE`]: a fixed text, because
    /// serde's own messages quote the input (`unknown field \`...\``,
    /// `invalid type: string "..."`), and what a client sent must never come
    /// back in an error. To tell the client more, deserialize yourself and
    /// reject with your own words.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(&self.data)
            .map_err(|_| HandlerError::reject("invalid_data", INVALID_DATA_MESSAGE))
    }
}

impl Connection {
    /// Deserialize the claims the tenant exposes to handlers.
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(&self.principal.claims)
            .map_err(|e| HandlerError::fail(format!("exposed claims do not fit: {e}")))
    }
}

/// The actions a call asks the host to apply, in order.
///
/// Builder methods take values to serialize as JSON. Serialization of plain
/// data does not fail; if it does, the call fails with `handler_failed`.
#[derive(Debug, Default)]
#[must_use = "actions do nothing unless returned from the handler"]
pub struct Actions {
    list: Vec<Action>,
    serialize_error: Option<String>,
}

impl Actions {
    /// No actions.
    pub fn new() -> Self {
        Self::default()
    }

    fn json(&mut self, value: &impl Serialize) -> String {
        match serde_json::to_string(value) {
            Ok(text) => text,
            Err(e) => {
                self.serialize_error.get_or_insert(e.to_string());
                String::new()
            }
        }
    }

    /// Answer the calling client with `value` as the `ack`'s data.
    pub fn reply(mut self, value: &impl Serialize) -> Self {
        let data = self.json(value);
        self.list.push(Action::Reply(data));
        self
    }

    /// Answer the calling client with JSON text that is already serialized.
    pub fn reply_raw(mut self, json: impl Into<String>) -> Self {
        self.list.push(Action::Reply(json.into()));
        self
    }

    /// Publish `value` to every subscriber of `channel`.
    pub fn publish(mut self, channel: impl Into<String>, value: &impl Serialize) -> Self {
        let data = self.json(value);
        self.list.push(Action::Publish(Publish {
            channel: channel.into(),
            data,
        }));
        self
    }

    /// Deliver `value` to every connection of `subject` (same tenant).
    pub fn send(mut self, subject: impl Into<String>, value: &impl Serialize) -> Self {
        let data = self.json(value);
        self.list.push(Action::Send(SendToSubject {
            subject: subject.into(),
            data,
        }));
        self
    }

    /// Subscribe the calling connection to `channel`.
    pub fn subscribe(mut self, channel: impl Into<String>) -> Self {
        self.list.push(Action::Subscribe(channel.into()));
        self
    }

    /// Unsubscribe the calling connection from `channel`.
    pub fn unsubscribe(mut self, channel: impl Into<String>) -> Self {
        self.list.push(Action::Unsubscribe(channel.into()));
        self
    }

    /// Close the calling connection with an application code (4000..=4999)
    /// or 1000, and a short reason.
    pub fn close(mut self, code: u16, reason: impl Into<String>) -> Self {
        self.list.push(Action::Close(CloseRequest {
            code,
            reason: reason.into(),
        }));
        self
    }

    /// Add an action built by hand.
    pub fn push(mut self, action: Action) -> Self {
        self.list.push(action);
        self
    }

    /// The actions so far.
    pub fn as_slice(&self) -> &[Action] {
        &self.list
    }

    fn into_wit(self) -> Result<Vec<Action>, HandlerError> {
        match self.serialize_error {
            Some(e) => Err(HandlerError::fail(format!(
                "could not serialize an action: {e}"
            ))),
            None => Ok(self.list),
        }
    }
}

/// Tenant-scoped key-value state (capability `state`).
///
/// Writes are buffered and committed only if the call returns `Ok`.
pub mod state {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::HandlerError;
    use crate::bindings::sluice::handler::state as wit;
    pub use crate::bindings::sluice::handler::state::StateError;

    /// The bytes stored under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        wit::get(key)
    }

    /// Store `value` under `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        wit::set(key, value)
    }

    /// Remove `key`.
    pub fn delete(key: &str) -> Result<(), StateError> {
        wit::delete(key)
    }

    /// The JSON value stored under `key`; `Ok(None)` if there is none.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HandlerError> {
        match wit::get(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                HandlerError::fail(format!("state value under {key:?} is not valid: {e}"))
            }),
        }
    }

    /// Store `value` as JSON under `key`.
    pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| HandlerError::fail(format!("could not serialize state: {e}")))?;
        wit::set(key, &bytes).map_err(|e| HandlerError::fail(format!("state write refused: {e:?}")))
    }
}

/// Logging into the host's logs (capability `log`): rate-limited and
/// size-capped per call by the host.
pub mod log {
    use crate::bindings::sluice::handler::log as wit;
    pub use wit::Level;

    /// Write one line at `level`.
    pub fn write(level: Level, message: &str) {
        wit::write(level, message);
    }
    /// Write a debug line.
    pub fn debug(message: &str) {
        wit::write(Level::Debug, message);
    }
    /// Write an info line.
    pub fn info(message: &str) {
        wit::write(Level::Info, message);
    }
    /// Write a warning.
    pub fn warn(message: &str) {
        wit::write(Level::Warn, message);
    }
    /// Write an error line.
    pub fn error(message: &str) {
        wit::write(Level::Error, message);
    }
}

/// The host's clock (capability `clock`).
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        crate::bindings::sluice::handler::clock::now_ms()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Shape {
        text: String,
        #[serde(default)]
        count: u8,
    }

    fn message(data: &str) -> Message {
        Message {
            route: "r".into(),
            channel: None,
            data: data.into(),
        }
    }

    #[test]
    fn invalid_data_never_quotes_the_input() {
        for data in [
            r#"{"text": "ok", "SECRET_field": 1}"#,
            r#""SECRET_string""#,
            r#"{"text": 1234567}"#,
            r#"{"text": "ok", "count": 99999}"#,
            r#"{"text": ["SECRET_item"]}"#,
            r#"{"count": 1}"#,
        ] {
            // serde's own words would quote it: the reason for the fixed text.
            let serde_says = serde_json::from_str::<Shape>(data)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!serde_says.is_empty(), "{data} must not fit");
            match message(data).data::<Shape>() {
                Err(HandlerError::Reject(r)) => {
                    assert_eq!(r.code, "invalid_data");
                    assert_eq!(r.message, INVALID_DATA_MESSAGE, "{data}");
                }
                other => panic!("{data}: {other:?}"),
            }
        }
        assert!(
            serde_json::from_str::<Shape>(r#"{"text": "ok", "SECRET_field": 1}"#)
                .err()
                .is_some_and(|e| e.to_string().contains("SECRET")),
            "serde quotes unknown fields"
        );
        assert!(message(r#"{"text": "fits"}"#).data::<Shape>().is_ok());
    }
}
