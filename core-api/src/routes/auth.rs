//! `/auth/*`: registration, login, refresh-token rotation with reuse detection, logout.

use gatehouse_common::telemetry::fingerprint;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
struct TokenPair {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    refresh_expires_in: i64,
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
    json(StatusCode::OK, &pair)
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
        refresh_token: refresh.token,
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
    let body: RefreshBody = read_json(&parts.headers, body, state.body_limit()).await?;
    let ttl = time::Duration::seconds(state.settings.auth.refresh_ttl_seconds as i64);
    match refresh::rotate(&state.db, &body.refresh_token, ttl).await? {
        refresh::Rotation::Rotated { user_id, next } => {
            ctx.user_id = Some(user_id);
            state
                .metrics
                .refresh_reuse
                .with_label_values(&["rotated"])
                .inc();
            json(StatusCode::OK, &pair(state, user_id, next)?)
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
            Err(ApiError::InvalidRefreshToken)
        }
        refresh::Rotation::Invalid => {
            state.metrics.auth_failure("invalid_refresh_token");
            Err(ApiError::InvalidRefreshToken)
        }
    }
}

pub async fn logout(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let body: RefreshBody = read_json(&parts.headers, body, state.body_limit()).await?;
    // Always 204: logout must not tell whether a token existed.
    refresh::revoke_family(&state.db, &body.refresh_token).await?;
    tracing::info!(request_id = %ctx.request_id, "logout: refresh family revoked");
    Ok(empty(StatusCode::NO_CONTENT))
}
