//! The data path's seam to the control plane: a route's handler slot.
//!
//! A route names a handler. One the operator configured in the file is a
//! loaded [`sluice_sandbox::Handler`]; one a tenant pushes through the
//! management API is a [`HandlerSlot`]: the control plane (`sluice-control`)
//! decides, message by message, which version serves a connection (stable,
//! a sticky canary, a shadow rehearsed beside it). The data path never
//! imports the control plane: it asks these traits, which the control plane
//! implements and the `sluice` crate plugs in.

use std::sync::Arc;

use sluice_config::ManagedConfig;
use sluice_sandbox::{BoxFuture, CallError, CallOutcome, Handler};

/// What a message (or a lifecycle call) of one connection runs on.
pub struct Picked {
    /// The version that answers.
    pub handler: Handler,
    /// Its number.
    pub version: u32,
    /// A version to rehearse the message on first, beside the one that
    /// answers; its outcome goes to [`HandlerSlot::compare_shadow`] and is
    /// never applied.
    pub shadow: Option<Handler>,
}

/// One pushed handler, as routes see it.
pub trait HandlerSlot: Send + Sync + 'static {
    /// The handler's name.
    fn name(&self) -> &str;
    /// The version connection `conn_id` runs on (`None`: nothing serves).
    fn pick(&self, conn_id: u64) -> Option<Picked>;
    /// A message ran on the serving version and was rehearsed on the
    /// shadow: compare the two.
    fn compare_shadow(
        &self,
        route: &str,
        served: &Result<CallOutcome, CallError>,
        rehearsed: &Result<CallOutcome, CallError>,
    );
    /// Every version loaded now, by number (for `/metrics`).
    fn serving(&self) -> Vec<(u32, Handler)>;
}

/// The pushed handlers of every tenant, as the data path needs them.
pub trait PushedHandlers: Send + Sync + 'static {
    /// Names of the pushed handlers `tenant` has.
    fn names<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Vec<String>>;
    /// The slot of a pushed handler, its versions loaded with the tenant's
    /// current managed settings. An error names each version that no
    /// longer loads (a reload that revokes a grant a serving version
    /// imports is refused).
    fn slot<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        config: &'a ManagedConfig,
    ) -> BoxFuture<'a, Result<Arc<dyn HandlerSlot>, Vec<String>>>;
    /// Every slot of `tenant` (for lifecycle calls and metrics).
    fn slots_of(&self, tenant: &str) -> Vec<Arc<dyn HandlerSlot>>;
}

/// No control plane: no tenant has pushed handlers (a server built
/// without one, e.g. `sluice check`).
#[derive(Debug, Default)]
pub struct NoPushedHandlers;

impl PushedHandlers for NoPushedHandlers {
    fn names<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    fn slot<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        _config: &'a ManagedConfig,
    ) -> BoxFuture<'a, Result<Arc<dyn HandlerSlot>, Vec<String>>> {
        Box::pin(std::future::ready(Err(vec![format!(
            "tenants.{tenant}: handler {name} is not configured and this server has no registry of pushed handlers"
        )])))
    }

    fn slots_of(&self, _tenant: &str) -> Vec<Arc<dyn HandlerSlot>> {
        Vec::new()
    }
}
