//! Account storage: registration, the sign-in lookup and the profile.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::{Db, DbError};
use crate::domain::Email;

/// An account as the API returns it.
#[derive(Debug, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl User {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: r.try_get(0)?,
            email: r.try_get(1)?,
            created_at: r.try_get(2)?,
        })
    }
}

/// A new account; `None` when the address is taken.
pub async fn register(
    db: &Db,
    email: &Email,
    password_hash: &str,
) -> Result<Option<User>, DbError> {
    let rows = db
        .query(
            "INSERT INTO users (email, password_hash) VALUES ($1, $2) \
             ON CONFLICT (email) DO NOTHING RETURNING id, email, created_at",
            &[(&email.as_str(), Type::TEXT), (&password_hash, Type::TEXT)],
        )
        .await?;
    Ok(rows.first().map(User::from_row).transpose()?)
}

/// The account id and stored bcrypt hash for a sign-in.
pub async fn credentials(db: &Db, email: &Email) -> Result<Option<(Uuid, String)>, DbError> {
    let rows = db
        .query(
            "SELECT id, password_hash FROM users WHERE email = $1",
            &[(&email.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(rows
        .first()
        .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()?)
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<User>, DbError> {
    let rows = db
        .query(
            "SELECT id, email, created_at FROM users WHERE id = $1",
            &[(&id, Type::UUID)],
        )
        .await?;
    Ok(rows.first().map(User::from_row).transpose()?)
}
