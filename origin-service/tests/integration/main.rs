//! Integration tests: each test starts a real origin (SQLite, HTTPS with a generated test CA) on
//! an ephemeral loopback port in a temporary folder, and talks to it over real TLS.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod detail;
mod listing;
mod resilience;
mod transport;
