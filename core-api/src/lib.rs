//! Gatehouse core API: accounts, access and refresh tokens, and owner-scoped tasks in
//! PostgreSQL, served over hyper. `main.rs` is a thin CLI over this library; tests build the
//! real application in-process with `Application::build` on port 0.

pub mod app;
pub mod auth;
pub mod client;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod routes;
pub mod settings;
pub mod state;

pub use app::Application;
pub use routes::ROUTES;
pub use routes::system::OPENAPI;
