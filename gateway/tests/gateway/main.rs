//! Integration tests of the gateway: the real binary on loopback, real TLS, a real upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod admin;
mod cli;
mod config;
mod connections;
mod e2e;
mod edge;
mod helpers;
mod jwks;
mod pebble;
mod rate_limits;
mod reload;
mod shared_limits;
mod tls;
mod upstreams;
