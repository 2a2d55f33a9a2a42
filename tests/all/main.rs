//! Sluice's integration tests, in one binary (one link, shared helpers).

mod chat;
mod config;
mod handshake;
mod jwks;
mod limits;
mod logs;
mod messages;
mod sandbox;
mod tokens;
