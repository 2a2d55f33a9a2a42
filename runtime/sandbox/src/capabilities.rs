//! The one table of capabilities: each [`Capability`] (the grant in the
//! configuration) names one `sluice:handler` WIT interface, served by one
//! host struct in the call's store data, which registers that interface in
//! the linker. A component that imports an interface it was not granted is
//! refused at load (`load::check_world`), so linking every interface here
//! gives no handler more than its grants.
//!
//! | grant   | WIT interface          | host struct            |
//! |---------|------------------------|------------------------|
//! | `state` | `sluice:handler/state` | [`super::state`] `StateHost` |
//! | `log`   | `sluice:handler/log`   | [`super::log`] `LogHost`     |
//! | `clock` | `sluice:handler/clock` | [`super::clock`] `ClockHost` |
//!
//! Host imports are async: a capability may wait (a networked store, an
//! outbound request) and the wait is charged to the call's budget and
//! bounded by its deadline (`call::Metered`).

use anyhow::Context as _;
use sluice_config::Capability;
use wasmtime::component::{HasSelf, Linker};

use super::bindings::sluice::handler::{clock, log, state};
use super::call::CallCtx;
use super::clock::ClockHost;
use super::log::LogHost;
use super::state::StateHost;

/// Register `capability`'s interface, served by its host struct.
fn link(capability: Capability, linker: &mut Linker<CallCtx>) -> wasmtime::Result<()> {
    match capability {
        Capability::State => {
            state::add_to_linker::<CallCtx, HasSelf<StateHost>>(linker, |ctx| &mut ctx.state)
        }
        Capability::Log => {
            log::add_to_linker::<CallCtx, HasSelf<LogHost>>(linker, |ctx| &mut ctx.log)
        }
        Capability::Clock => {
            clock::add_to_linker::<CallCtx, HasSelf<ClockHost>>(linker, |ctx| &mut ctx.clock)
        }
    }
}

/// Register every capability's interface.
pub(crate) fn link_all(linker: &mut Linker<CallCtx>) -> anyhow::Result<()> {
    for capability in Capability::ALL {
        link(capability, linker)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("linking sluice:handler/{}", capability.interface()))?;
    }
    Ok(())
}
