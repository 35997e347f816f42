//! What both Gatehouse services share: the problem+json error body (RFC 9457), layered TOML
//! settings with `${VAR}` interpolation and `*_FILE` secrets, telemetry set-up, request ids and
//! access-token verification (RFC 8725 / RFC 9068).

pub mod config;
pub mod healthcheck;
pub mod jwt;
pub mod pg;
pub mod problem;
pub mod request_id;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
