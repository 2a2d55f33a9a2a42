//! Fault injection for Sluice, the way Jepsen tests databases: a workload
//! of real clients records every operation and its outcome as a JSON-lines
//! history while a nemesis injects faults into real processes and a real
//! network; a checker then proves the history against the guarantees
//! Sluice documents, from the history alone.

#![forbid(unsafe_code)]

pub mod checker;
pub mod client;
pub mod command;
pub mod delay_line;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod rng;
pub mod run;
pub mod slots;
pub mod workload;
