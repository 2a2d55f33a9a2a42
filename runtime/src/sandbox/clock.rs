//! Host side of `sluice:handler/clock`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::bindings::sluice::handler::clock;
use super::call::CallCtx;

impl clock::Host for CallCtx {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
