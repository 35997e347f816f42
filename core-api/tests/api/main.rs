//! Integration tests of the core API: the real application on port 0 against a real
//! PostgreSQL, one fresh database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod cli;
mod cookies;
mod faults;
mod helpers;
mod hostile;
mod pipeline;
mod system;
mod tasks;
mod tokens;
