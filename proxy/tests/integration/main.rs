//! Integration tests: a real origin (SQLite, HTTPS with its generated CA) and a real Pingora
//! proxy in-process on ephemeral loopback ports; plus a plain-HTTP echo upstream that shows
//! exactly which headers cross the proxy.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abi_edges;
mod assemblyscript;
mod auth_plugin;
mod cache;
mod cli;
mod client_tls;
mod cluster;
mod common;
mod downstream;
mod hygiene;
mod metrics_plugin;
mod operations;
mod plugin_chain;
mod plugins;
mod proxying;
mod rate_limit_plugin;
mod shop;
mod transport;
