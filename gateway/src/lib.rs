//! Gatehouse gateway: the Pingora edge. `proxy` is the thin `ProxyHttp` implementation: it runs
//! the request `stages` in order, and every decision they make is a pure function in its own
//! module (`admission`, `routing`, `cors`, `limits`, `client_ip`, `headers`) or the shared
//! verifier (`gatehouse_common::jwt`); any refusal is one `rejection::Rejection`.
//!
//! Configuration flows one way: `settings` (the TOML as typed) → `compile` (every check, one
//! pass, errors as `file:line: key`) → `runtime` (what requests read, swapped whole by
//! `reload`). `server` assembles the listeners and background tasks from a compiled runtime.

pub mod acme;
pub mod admin;
pub mod admission;
pub mod client_ip;
pub mod compile;
pub mod conn;
pub mod cors;
pub mod headers;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod rejection;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod stages;
pub mod tls;
pub mod upstream;
