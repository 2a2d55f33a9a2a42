//! The data path: the pipeline from TCP accept to a handler's effects,
//! and the seams its backends and the control plane plug into.
//!
//! ```text
//! accept     handshakes-in-flight cap; PROXY v2 from configured load
//!            balancers (proxy.rs); per-IP (IPv6: per-/64) connection cap
//!            and handshake rate                                       (accept.rs)
//! tls        rustls, wss only; the stream on its unbuffered API       (sluice-tls, tls_stream.rs)
//! handshake  path -> tenant, Origin, token, connection caps           (handshake.rs)
//! auth       JWT -> Principal                                         (auth/)
//! session    one task per connection, bounded reads and queue         (session/)
//! decode     UTF-8, JSON depth, envelope -> Request                   (stages/decode.rs)
//! limit      connection, subject, tenant quotas                       (ratelimit.rs)
//! authorize  route scopes, channel rules -> Authorized                (stages/authorize.rs, authz.rs)
//! validate   the route's JSON Schema -> Validated                     (stages/validate.rs, schema.rs)
//! key        a keyed request begun in the idempotency table: run,
//!            replay the first answer, or refuse                        (idempotency.rs)
//! call       the tenant's handler under limits -> Proposed            (stages/call.rs, sluice-sandbox)
//! effects    every returned action authorized again -> Vec<Effect>    (stages/effects.rs)
//! apply      replies, publishes (history), sends, subscriptions      (session/apply.rs)
//! outbox     per-connection bounded queues                            (outbox.rs)
//! rejection  sandbox and read failures -> what the client sees        (rejection.rs)
//! ```
//!
//! Seams (traits this crate defines and others implement): the backends
//! ([`backends`]: broker, state, history, presence, registry storage, the
//! fleet) and a route's handler slot ([`slot`], the control plane's way in).
//! The fleet (`sluice-fleet`) and the control plane (`sluice-control`)
//! depend on this crate, never the reverse; the `sluice` crate composes
//! them.
//!
//! The crate root only declares modules and re-exports: every module
//! imports what it needs from the module that defines it.

#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod auth;
pub mod authz;
pub mod backends;
pub mod handshake;
pub mod history;
pub mod idempotency;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod ratelimit;
pub mod rejection;
pub mod schema;
pub mod session;
pub mod slot;
pub mod stages;
pub mod state;
pub mod tenant;
pub mod tls_stream;

pub use accept::Server;
pub use sluice_protocol as protocol;
pub use sluice_tls as tls;
pub use state::{COMPILED_DIR, SWEEP_INTERVAL, ServerState};
