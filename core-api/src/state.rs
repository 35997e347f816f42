//! What every request handler shares ([`AppState`]) and what the envelope records about one
//! request ([`Ctx`]), with the two questions every handler asks: who is calling
//! ([`AppState::authenticate`]) and from where ([`AppState::client_of`]).

use bytes::Bytes;
use gatehouse_common::config::Environment;
use gatehouse_common::jwt::Verifier;
use http::{HeaderMap, Request};
use hyper::body::Incoming;
use uuid::Uuid;

use crate::auth::keys::Signer;
use crate::auth::password::Hasher;
use crate::auth::throttle::LoginThrottle;
use crate::client::{ClientKey, Peer, TrustedProxies, client_key};
use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Per-request facts the envelope logs.
pub struct Ctx {
    pub request_id: String,
    pub route: &'static str,
    pub user_id: Option<Uuid>,
}

/// Everything handlers share.
pub struct AppState {
    pub env: Environment,
    pub settings: Settings,
    pub db: Db,
    pub verifier: Verifier,
    pub hasher: Hasher,
    pub metrics: Metrics,
    pub jwks_body: Bytes,
    pub(crate) signer: Signer,
    pub(crate) login_throttle: LoginThrottle,
    pub(crate) trusted_proxies: TrustedProxies,
}

impl AppState {
    pub fn body_limit(&self) -> usize {
        self.settings.server.body_limit_bytes
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Verifies the bearer token (the API checks it itself even behind the gateway) and records
    /// the subject on the request.
    pub fn authenticate(&self, headers: &HeaderMap, ctx: &mut Ctx) -> Result<Uuid, ApiError> {
        let Some(token) = crate::http::bearer(headers) else {
            self.metrics.auth_failure("missing_token");
            return Err(ApiError::Unauthenticated);
        };
        let claims = self.verifier.verify(token).map_err(|r| {
            self.metrics.auth_failure(r.reason());
            tracing::warn!(request_id = %ctx.request_id, reason = r.reason(), "access token rejected");
            ApiError::InvalidToken(r)
        })?;
        let sub = Uuid::parse_str(&claims.sub).map_err(|_| {
            self.metrics.auth_failure("malformed");
            ApiError::InvalidToken(gatehouse_common::jwt::Rejection::Malformed)
        })?;
        ctx.user_id = Some(sub);
        Ok(sub)
    }

    /// The client a request comes from (for throttling): see `client.rs`.
    pub fn client_of(&self, req: &Request<Incoming>) -> ClientKey {
        let peer = req.extensions().get::<Peer>().map(|p| p.0);
        client_key(peer, req.headers(), &self.trusted_proxies)
    }

    pub fn login_throttle(&self) -> &LoginThrottle {
        &self.login_throttle
    }
}
