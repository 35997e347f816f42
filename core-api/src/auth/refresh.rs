//! Refresh tokens (RFC 9700 §4.14): the material (256 random bits from the OS CSPRNG, handed to
//! the client as base64url, stored only as SHA-256) and the lifecycle of a family (one login):
//! [`start_family`], [`rotate`], [`revoke_family`], each one SQL statement.
//!
//! The family row (`refresh_families`) is where a family's fate is decided: its absolute
//! expiry and its revocation. Rotation takes that row's lock before it spends a token, and
//! revocation is an update of that row, so the two are serialised by PostgreSQL; a token is
//! usable only while its family is not revoked, so no token issued by a rotation that raced a
//! revocation survives it. `refresh_tokens.revoked_at` is still written (for readers that look
//! at tokens only), but it is never what decides.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::db::{Db, DbError};

/// Why a refresh-token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no randomness for a new token: {0}")]
    Random(getrandom::Error),
}

impl From<tokio_postgres::Error> for RefreshError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

/// A fresh token and the hash to store for it.
pub fn generate() -> Result<(String, [u8; 32]), getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash(&token);
    Ok((token, hash))
}

/// The stored form of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Cheap shape check so garbage never reaches the database.
pub fn looks_valid(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A token to hand out: the plain value (given to the client once) and when it expires.
pub struct Issued {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

/// What presenting a refresh token did.
pub enum Rotation {
    /// The token was live: it is spent and `next` replaces it.
    Rotated { user_id: Uuid, next: Issued },
    /// The token had been spent before: its whole family is now revoked (committed).
    ReuseDetected {
        user_id: Uuid,
        family_id: Uuid,
        revoked_tokens: i64,
    },
    /// Unknown, expired or revoked: nothing changed.
    Invalid,
}

/// A new login: its family and the family's first token, in one statement.
const START_FAMILY: &str = "\
WITH family AS (
    INSERT INTO refresh_families (id, user_id, expires_at) VALUES ($1, $2, $5)
    RETURNING id
)
INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at, family_expires_at)
SELECT id, $2, $3, $4, $5 FROM family";

pub async fn start_family(
    db: &Db,
    user_id: Uuid,
    ttl: time::Duration,
    family_ttl: time::Duration,
) -> Result<Issued, RefreshError> {
    let now = OffsetDateTime::now_utc();
    let expires_at = now + ttl;
    let family_expires_at = now + family_ttl;
    let (token, hash) = generate().map_err(RefreshError::Random)?;
    let family = Uuid::new_v4();
    db.query(
        START_FAMILY,
        &[
            (&family, Type::UUID),
            (&user_id, Type::UUID),
            (&hash.as_slice(), Type::BYTEA),
            (&expires_at, Type::TIMESTAMPTZ),
            (&family_expires_at, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(Issued { token, expires_at })
}

/// Rotation (RFC 9700 §4.14.2) as one statement:
/// 1. lock the family row, if the family is live (the lock serialises this against
///    [`REVOKE_REUSED`] and [`REVOKE_FAMILY`]; after waiting for it, READ COMMITTED re-checks
///    `revoked_at` on the newest row version);
/// 2. spend the token with a compare-and-set: of two concurrent refreshes with the same
///    token, exactly one sees `used_at IS NULL`;
/// 3. insert its successor, which never outlives the family.
const ROTATE: &str = "\
WITH family AS (
    UPDATE refresh_families f SET rotated_at = now()
    FROM refresh_tokens t
    WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > now()
      AND f.id = t.family_id AND f.revoked_at IS NULL AND f.expires_at > now()
    RETURNING f.id, f.expires_at
), spent AS (
    UPDATE refresh_tokens SET used_at = now()
    WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
      AND family_id IN (SELECT id FROM family)
    RETURNING family_id, user_id
)
INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at, family_expires_at)
SELECT spent.family_id, spent.user_id, $2, LEAST($3::timestamptz, family.expires_at), family.expires_at
FROM spent JOIN family ON family.id = spent.family_id
RETURNING user_id, expires_at";

/// A spent token presented again: revoke its family (and mark its tokens). Autocommitted on
/// its own, so the revocation persists although the request fails.
const REVOKE_REUSED: &str = "\
WITH family AS (
    UPDATE refresh_families f SET revoked_at = now()
    FROM refresh_tokens t
    WHERE t.token_hash = $1 AND t.used_at IS NOT NULL AND f.id = t.family_id
      AND f.revoked_at IS NULL
    RETURNING f.id, f.user_id
), tokens AS (
    UPDATE refresh_tokens SET revoked_at = now()
    WHERE family_id IN (SELECT id FROM family) AND revoked_at IS NULL
    RETURNING 1
)
SELECT id, user_id, (SELECT count(*) FROM tokens) FROM family";

/// Logout: the family of any token of it, spent or not.
const REVOKE_FAMILY: &str = "\
WITH family AS (
    UPDATE refresh_families f SET revoked_at = now()
    FROM refresh_tokens t
    WHERE t.token_hash = $1 AND f.id = t.family_id AND f.revoked_at IS NULL
    RETURNING f.id
)
UPDATE refresh_tokens SET revoked_at = now()
WHERE family_id IN (SELECT id FROM family) AND revoked_at IS NULL";

/// Presents `token`: rotates it if live, revokes its family if it was spent before.
pub async fn rotate(db: &Db, token: &str, ttl: time::Duration) -> Result<Rotation, RefreshError> {
    if !looks_valid(token) {
        return Ok(Rotation::Invalid);
    }
    let presented = hash(token);
    let (next, next_hash) = generate().map_err(RefreshError::Random)?;
    let expires_at = OffsetDateTime::now_utc() + ttl;
    let rows = db
        .query(
            ROTATE,
            &[
                (&presented.as_slice(), Type::BYTEA),
                (&next_hash.as_slice(), Type::BYTEA),
                (&expires_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if let Some(row) = rows.first() {
        return Ok(Rotation::Rotated {
            user_id: row.try_get(0)?,
            next: Issued {
                token: next,
                expires_at: row.try_get(1)?,
            },
        });
    }
    let revoked = db
        .query(REVOKE_REUSED, &[(&presented.as_slice(), Type::BYTEA)])
        .await?;
    Ok(match revoked.first() {
        Some(row) => Rotation::ReuseDetected {
            family_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            revoked_tokens: row.try_get(2)?,
        },
        None => Rotation::Invalid,
    })
}

/// Revokes the family of `token` (logout). Unknown tokens change nothing.
pub async fn revoke_family(db: &Db, token: &str) -> Result<(), DbError> {
    if looks_valid(token) {
        let presented = hash(token);
        db.query(REVOKE_FAMILY, &[(&presented.as_slice(), Type::BYTEA)])
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, ha) = generate().unwrap_or_else(|e| panic!("{e}"));
        let (b, _) = generate().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert!(looks_valid(&a));
        assert_eq!(hash(&a), ha);
    }
}
