//! The API's one error type and its one mapping to HTTP (RFC 9457 problem+json). 5xx bodies
//! are generic; their causes are logged here with the request id.

use bytes::Bytes;
use gatehouse_common::jwt::Rejection;
use gatehouse_common::problem::{self, FieldError, Problem};
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::auth::password::HashError;
use crate::auth::refresh::RefreshError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid access token: {0}")]
    InvalidToken(Rejection),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static [Method]),
    #[error("email taken")]
    EmailTaken,
    #[error("payload too large")]
    PayloadTooLarge(usize),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error("overloaded")]
    Overloaded,
    #[error("request timed out")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
}

/// One refused request field (a header, say) is a 422 like a refused body field.
impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Validation(vec![e])
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(why) => Self::DatabaseUnavailable(why),
            DbError::Query(e) => Self::Internal(format!("database: {e}")),
            DbError::NoRow(what) => Self::Internal(format!("database: {what} returned no row")),
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::Db(e) => e.into(),
            RefreshError::Random(e) => Self::Internal(format!("refresh token: {e}")),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded,
            HashError::Internal(why) => Self::Internal(why),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated
            | Self::InvalidToken(_)
            | Self::InvalidCredentials
            | Self::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::DatabaseUnavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem body: stable slug, title, and a detail safe to show a client.
    pub fn problem(&self) -> Problem {
        let status = self.status().as_u16();
        let p = |kind, title| Problem::new(status, kind, title);
        match self {
            Self::Validation(errors) => p("validation_failed", "Request validation failed")
                .detail("One or more fields are invalid; see errors.")
                .errors(errors.clone()),
            Self::Malformed(why) => p("malformed_request", "Malformed request").detail(why.clone()),
            Self::Unauthenticated => p("unauthorized", "Authentication required")
                .detail("Send an access token as 'Authorization: Bearer <token>'."),
            Self::InvalidToken(Rejection::Expired) => {
                p("token_expired", "Access token expired").detail("Refresh the access token.")
            }
            Self::InvalidToken(r) => p("invalid_token", "Invalid access token").detail(r.to_string()),
            Self::InvalidCredentials => p("invalid_credentials", "Invalid credentials")
                .detail("The e-mail address or password is incorrect."),
            Self::InvalidRefreshToken => p("invalid_refresh_token", "Invalid refresh token")
                .detail("The refresh token is invalid, expired, revoked or already used; sign in again."),
            Self::Forbidden => p("forbidden", "Forbidden")
                .detail("You may only access your own resources."),
            Self::NotFound => p("not_found", "Not found"),
            Self::MethodNotAllowed(_) => p("method_not_allowed", "Method not allowed"),
            Self::EmailTaken => p("email_taken", "E-mail address already registered"),
            Self::PayloadTooLarge(limit) => p("payload_too_large", "Payload too large")
                .detail(format!("The request body must be at most {limit} bytes.")),
            Self::UnsupportedMediaType => p("unsupported_media_type", "Unsupported media type")
                .detail("Send the body as application/json."),
            Self::RateLimited { .. } => p("rate_limited", "Too many requests")
                .detail("Too many attempts; retry after the time in Retry-After."),
            Self::DatabaseUnavailable(_) => p("database_unavailable", "Database unavailable")
                .detail("The service cannot reach its database right now; retry shortly."),
            Self::Overloaded => p("overloaded", "Service overloaded")
                .detail("The service is busy; retry shortly."),
            Self::Timeout => p("timeout", "Request timed out"),
            Self::Internal(_) => p("internal_error", "Internal server error"),
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(request_id, error = %self, "request failed");
        }
        let body = self.problem().request_id(request_id).to_bytes();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        match &self {
            // RFC 6750 §3: challenge on 401, with error="invalid_token" when one was sent.
            Self::Unauthenticated => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gatehouse\""),
                );
            }
            Self::InvalidToken(_) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
                );
            }
            Self::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    h.insert(ALLOW, v);
                }
            }
            Self::RateLimited { retry_after_secs } => {
                h.insert(
                    RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(&1).to_owned()),
                );
            }
            Self::DatabaseUnavailable(_) | Self::Overloaded => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
            }
            _ => {}
        }
        resp
    }
}
