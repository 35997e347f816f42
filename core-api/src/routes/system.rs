//! Health, readiness, metrics, the JWK Set, the OpenAPI document and `/api/me`.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::db::users;
use crate::error::ApiError;
use crate::http::{Body, json};
use crate::state::{AppState, Ctx};

/// The committed OpenAPI 3.1 document (kept in sync with `ROUTES` by a test).
pub const OPENAPI: &str = include_str!("../../openapi.json");

fn bytes(
    content_type: &'static str,
    cache: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

pub fn healthz() -> Result<Response<Body>, ApiError> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers.
pub async fn readyz(state: &AppState) -> Result<Response<Body>, ApiError> {
    state.db.ping().await?;
    json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
}

pub fn jwks(state: &AppState) -> Response<Body> {
    // Short public caching: verifiers refetch on an unknown kid anyway.
    bytes(
        "application/jwk-set+json",
        "public, max-age=300",
        state.jwks_body.clone(),
    )
}

/// The exposition, after one `SELECT 1` through the pool (at most 1 s) for `db_up`.
pub async fn metrics(state: &AppState) -> Response<Body> {
    let up = tokio::time::timeout(std::time::Duration::from_secs(1), state.db.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    state.metrics.db_up.set(i64::from(up));
    bytes(
        "text/plain; version=0.0.4",
        "no-store",
        state.metrics.render(state.db.pool()),
    )
}

pub fn openapi() -> Response<Body> {
    bytes("application/json", "public, max-age=300", OPENAPI)
}

pub async fn me(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let sub = state.authenticate(req.headers(), ctx)?;
    let user = users::get(&state.db, sub)
        .await?
        .ok_or(ApiError::NotFound)?;
    json(StatusCode::OK, &user)
}
