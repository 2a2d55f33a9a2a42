//! Metrics: the counters the data path records ([`counters`]) and their
//! rendering for `/metrics` ([`render`]).

pub mod counters;
pub mod render;
