//! Time for handlers. `sluice:handler/clock` (granted as `clock`) reads the
//! wall clock. WASI's clocks are there for every guest (language runtimes
//! import them), but without the `clock` grant they are frozen at zero, so
//! an ungranted handler learns nothing from them; sleeping on them is
//! bounded by the call's deadline like every other wait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use super::bindings::sluice::handler::clock;

/// The host side of `sluice:handler/clock`.
pub(crate) struct ClockHost;

impl clock::Host for ClockHost {
    async fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A WASI clock that always says zero (no `clock` grant).
pub(crate) struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
