//! The marketplace control plane: handlers a tenant pushes through the
//! management API ([`api`]), verified before they may serve ([`verify`]),
//! kept content-addressed with every version and its report ([`record`],
//! through the data path's registry-storage seam: [`storage`]), routed
//! `stable` / `canary` (a percentage, sticky per connection) / `shadow`
//! (rehearsed beside stable, compared, never applied: [`shadow`]), served
//! through [`slot::Slot`]s, and audited ([`audit`]).
//!
//! The data path (`sluice-server`) never imports this crate: a route holds
//! a `HandlerSlot`, the server a `PushedHandlers`, the admin listener a
//! `ManagementApi`, all traits it defines and this crate implements.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod client;
mod http;
pub mod record;
pub mod refusal;
pub mod registry;
pub mod report;
pub mod shadow;
pub mod slot;
pub mod storage;
pub mod tenants;
pub mod tenants_api;
pub mod throttle;
pub mod verify;

pub use api::Management;
pub use record::Stage;
pub use registry::Registry;
pub use tenants::Tenants;
