//! `/auth/*`: registration, login, refresh-token rotation with reuse detection, logout. The
//! refresh token travels in the JSON body or, when the client asks for it, in an HttpOnly
//! cookie (`auth::cookie`).

use gatehouse_common::telemetry::fingerprint;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::cookie::{self, Transport};
use crate::auth::refresh;
use crate::db::users;
use crate::domain::{Email, Fields, Password};
use crate::error::ApiError;
use crate::http::{Body, empty, json, read_json};
use crate::state::{AppState, Ctx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

/// Refresh and logout: the token, or nothing when it comes in the cookie.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    #[serde(default, deserialize_with = "present_string")]
    refresh_token: Option<String>,
}

/// A field that may be left out but, when sent, is a string (`null` is a 422 like any other
/// wrong type, as the schema says).
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

#[derive(Serialize)]
struct TokenPair {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    /// Absent with cookie transport: the token is in `Set-Cookie`, out of page scripts' reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    refresh_expires_in: i64,
}

impl TokenPair {
    /// The 200 answer: the pair in the body, or the refresh token moved into the cookie.
    fn respond(mut self, transport: Transport) -> Result<Response<Body>, ApiError> {
        let moved = match transport {
            Transport::Cookie => self.refresh_token.take(),
            Transport::Body => None,
        };
        let mut resp = json(StatusCode::OK, &self)?;
        if let Some(token) = moved {
            cookie::set(resp.headers_mut(), &token, self.refresh_expires_in);
        }
        Ok(resp)
    }
}

/// The refresh token a refresh or logout presents: the body's, else (cookie transport only)
/// the cookie's. Without the transport header the cookie is never read (CSRF: `auth::cookie`);
/// two cookies of that name are no token at all (`cookie::Presented::Ambiguous`).
fn presented(body: RefreshBody, transport: Transport, headers: &http::HeaderMap) -> Option<String> {
    body.refresh_token.or_else(|| match transport {
        Transport::Cookie => match cookie::read(headers) {
            cookie::Presented::One(token) => Some(token),
            cookie::Presented::None | cookie::Presented::Ambiguous => None,
        },
        Transport::Body => None,
    })
}

/// 401 `invalid_refresh_token`; with cookie transport the dead cookie is removed too, so the
/// browser stops presenting it.
fn refresh_refused(transport: Transport, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    match transport {
        Transport::Body => Err(ApiError::InvalidRefreshToken),
        Transport::Cookie => {
            let mut resp = ApiError::InvalidRefreshToken.into_response(&ctx.request_id);
            cookie::clear(resp.headers_mut());
            Ok(resp)
        }
    }
}

pub async fn register(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let body: Credentials = read_json(&parts.headers, body, state.body_limit()).await?;
    let mut fields = Fields::default();
    let email = fields.take(Email::parse(&body.email));
    let password = fields.take(Password::parse(body.password, "password"));
    fields.finish().map_err(ApiError::Validation)?;
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Internal("parsed fields missing".into()));
    };
    let hash = state.hasher.hash(&password).await?;
    let user = users::register(&state.db, &email, &hash)
        .await?
        .ok_or(ApiError::EmailTaken)?;
    ctx.user_id = Some(user.id);
    tracing::info!(request_id = %ctx.request_id, user_id = %user.id, "account registered");
    json(StatusCode::CREATED, &user)
}

pub async fn login(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let client = state.client_of(&req);
    let (parts, body) = req.into_parts();
    let transport = Transport::of(&parts.headers)?;
    let body: Credentials = read_json(&parts.headers, body, state.body_limit()).await?;
    // Malformed e-mail or an impossible password cannot match an account; they take the
    // same path as an unknown account so the answer says nothing more.
    let email = Email::parse(&body.email).ok();
    let password = Password::parse(body.password, "password").ok();
    let account_key = email
        .as_ref()
        .map_or_else(|| body.email.trim().to_lowercase(), |e| e.to_string());
    if let Err(t) = state.login_throttle().check(&account_key, client) {
        state.metrics.auth_failure("login_rate_limited");
        tracing::warn!(
            request_id = %ctx.request_id,
            account = %fingerprint(account_key.as_bytes()),
            client = %client,
            scope = t.scope.label(),
            "login throttled"
        );
        return Err(ApiError::RateLimited {
            retry_after_secs: t.retry_after.as_secs() + 1,
        });
    }

    let stored = match &email {
        Some(email) => users::credentials(&state.db, email).await?,
        None => None,
    };
    let verified = match &password {
        Some(p) => {
            state
                .hasher
                .verify(p, stored.as_ref().map(|(_, h)| h.as_str()))
                .await?
        }
        None => {
            // Still spend one bcrypt so timing matches.
            let filler = Password::parse("x".repeat(16), "password").ok();
            if let Some(f) = filler {
                let _ = state.hasher.verify(&f, None).await?;
            }
            false
        }
    };
    let user_id = match (verified, stored) {
        (true, Some((id, _))) => id,
        (_, stored) => {
            state.login_throttle().failed(&account_key, client);
            state.metrics.auth_failure("invalid_credentials");
            tracing::warn!(
                request_id = %ctx.request_id,
                user_id = ?stored.map(|(id, _)| id),
                account = %fingerprint(account_key.as_bytes()),
                "login failed"
            );
            return Err(ApiError::InvalidCredentials);
        }
    };
    state.login_throttle().succeeded(&account_key, client);
    ctx.user_id = Some(user_id);
    let pair = start_family(state, user_id).await?;
    tracing::info!(request_id = %ctx.request_id, user_id = %user_id, "login succeeded");
    pair.respond(transport)
}

/// A new login: a new refresh family and its first token.
async fn start_family(state: &AppState, user_id: Uuid) -> Result<TokenPair, ApiError> {
    let auth = &state.settings.auth;
    let issued = refresh::start_family(
        &state.db,
        user_id,
        time::Duration::seconds(auth.refresh_ttl_seconds as i64),
        time::Duration::seconds(auth.refresh_family_ttl_seconds as i64),
    )
    .await?;
    pair(state, user_id, issued)
}

fn pair(state: &AppState, user_id: Uuid, refresh: refresh::Issued) -> Result<TokenPair, ApiError> {
    let (access_token, expires_in) = state
        .signer()
        .issue(user_id)
        .map_err(|e| ApiError::Internal(format!("signing: {e}")))?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token: Some(refresh.token),
        refresh_expires_in: (refresh.expires_at - OffsetDateTime::now_utc())
            .whole_seconds()
            .max(0),
    })
}

pub async fn refresh(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let transport = Transport::of(&parts.headers)?;
    let body: RefreshBody = read_json(&parts.headers, body, state.body_limit()).await?;
    let Some(token) = presented(body, transport, &parts.headers) else {
        state.metrics.auth_failure("invalid_refresh_token");
        return refresh_refused(transport, ctx);
    };
    let ttl = time::Duration::seconds(state.settings.auth.refresh_ttl_seconds as i64);
    match refresh::rotate(&state.db, &token, ttl).await? {
        refresh::Rotation::Rotated { user_id, next } => {
            ctx.user_id = Some(user_id);
            state
                .metrics
                .refresh_reuse
                .with_label_values(&["rotated"])
                .inc();
            pair(state, user_id, next)?.respond(transport)
        }
        refresh::Rotation::ReuseDetected {
            user_id,
            family_id,
            revoked_tokens,
        } => {
            ctx.user_id = Some(user_id);
            state
                .metrics
                .refresh_reuse
                .with_label_values(&["reuse_detected"])
                .inc();
            tracing::warn!(
                request_id = %ctx.request_id, user_id = %user_id, family = %family_id,
                revoked = revoked_tokens,
                "refresh token reuse detected: family revoked"
            );
            state.metrics.auth_failure("invalid_refresh_token");
            refresh_refused(transport, ctx)
        }
        refresh::Rotation::Invalid => {
            state.metrics.auth_failure("invalid_refresh_token");
            refresh_refused(transport, ctx)
        }
    }
}

pub async fn logout(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let transport = Transport::of(&parts.headers)?;
    let body: RefreshBody = read_json(&parts.headers, body, state.body_limit()).await?;
    // Always 204: logout must not tell whether a token existed.
    if let Some(token) = presented(body, transport, &parts.headers) {
        refresh::revoke_family(&state.db, &token).await?;
    }
    tracing::info!(request_id = %ctx.request_id, "logout: refresh family revoked");
    let mut resp = empty(StatusCode::NO_CONTENT);
    if transport == Transport::Cookie {
        cookie::clear(resp.headers_mut());
    }
    Ok(resp)
}
