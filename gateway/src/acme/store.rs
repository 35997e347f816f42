//! Where ACME state lives: the account credentials (one account per directory URL, created
//! once), the issued certificates with their keys, and HTTP-01 answers. `files` keeps them
//! under a directory with atomic writes and 0600 keys; `postgres` keeps them in three tables so
//! every gateway instance serves the same certificates and answers any HTTP-01 challenge, and a
//! session advisory lock lets exactly one instance order at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};

/// An issued certificate as stored: PEM chain (leaf first) and PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub chain_pem: String,
    pub key_pem: String,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Account credentials (instant-acme's JSON) for a directory URL.
    async fn account(&self, directory: &str) -> Result<Option<String>, String>;
    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), String>;
    async fn certificate(&self, name: &str) -> Result<Option<Stored>, String>;
    async fn save_certificate(&self, name: &str, cert: &Stored) -> Result<(), String>;
    /// HTTP-01: the key authorization answered for `token`.
    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String>;
    async fn challenge(&self, token: &str) -> Result<Option<String>, String>;
    async fn remove_challenge(&self, token: &str) -> Result<(), String>;
    /// Takes the right to order (false: another instance holds it now).
    async fn try_lock(&self) -> Result<bool, String>;
    async fn unlock(&self);
    /// Shared between instances: HTTP-01 answers must be looked up here, not only in memory.
    fn shared(&self) -> bool;
}

fn account_key(directory: &str) -> String {
    let digest = Sha256::digest(directory.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `files`: `<dir>/accounts/<hash of directory URL>.json`, `<dir>/<name>/cert.pem` + `key.pem`.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: &str) -> Self {
        Self {
            dir: PathBuf::from(dir),
        }
    }

    /// Writes via a temporary file and rename, so a reader never sees half a file.
    fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
        let parent = path.parent().ok_or("no parent directory")?;
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if private {
            crate::tls::write_private(&tmp, bytes)?;
        } else {
            std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn read(path: &Path) -> Result<Option<String>, String> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[async_trait]
impl Store for FileStore {
    async fn account(&self, directory: &str) -> Result<Option<String>, String> {
        Self::read(
            &self
                .dir
                .join("accounts")
                .join(format!("{}.json", account_key(directory))),
        )
    }

    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), String> {
        let path = self
            .dir
            .join("accounts")
            .join(format!("{}.json", account_key(directory)));
        Self::write_atomic(&path, credentials.as_bytes(), true)
    }

    async fn certificate(&self, name: &str) -> Result<Option<Stored>, String> {
        let dir = self.dir.join(name);
        match (
            Self::read(&dir.join("cert.pem"))?,
            Self::read(&dir.join("key.pem"))?,
        ) {
            (Some(chain_pem), Some(key_pem)) => Ok(Some(Stored { chain_pem, key_pem })),
            _ => Ok(None),
        }
    }

    async fn save_certificate(&self, name: &str, cert: &Stored) -> Result<(), String> {
        let dir = self.dir.join(name);
        // Key first: a reader that sees the new chain also finds its key.
        Self::write_atomic(&dir.join("key.pem"), cert.key_pem.as_bytes(), true)?;
        Self::write_atomic(&dir.join("cert.pem"), cert.chain_pem.as_bytes(), false)
    }

    async fn put_challenge(&self, _token: &str, _key_authorization: &str) -> Result<(), String> {
        Ok(())
    }

    async fn challenge(&self, _token: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    async fn remove_challenge(&self, _token: &str) -> Result<(), String> {
        Ok(())
    }

    async fn try_lock(&self) -> Result<bool, String> {
        Ok(true)
    }

    async fn unlock(&self) {}

    fn shared(&self) -> bool {
        false
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gatehouse_acme_accounts (
    directory   text PRIMARY KEY,
    credentials text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gatehouse_acme_certificates (
    name       text PRIMARY KEY,
    chain_pem  text NOT NULL,
    key_pem    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gatehouse_acme_challenges (
    token             text PRIMARY KEY,
    key_authorization text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);";

/// The advisory lock key of the ordering right ("gatehouse acme" in ASCII, truncated).
const LOCK_KEY: i64 = 0x6761_7465_6163_6d65;

/// `postgres`: one connection (reopened when it breaks), which also holds the advisory lock.
pub struct PgStore {
    url: String,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl PgStore {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<MutexGuard<'_, Option<tokio_postgres::Client>>, String> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = gatehouse_common::pg::connect_once(
                &self.url,
                Duration::from_secs(5),
                "acme storage",
            )
            .await
            .map_err(|e| format!("acme storage: {e}"))?;
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| format!("acme storage: creating tables: {e}"))?;
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, String> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or("acme storage: not connected")?;
        client
            .query_opt(sql, params)
            .await
            .map_err(|e| format!("acme storage: {e}"))
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), String> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or("acme storage: not connected")?;
        client
            .execute(sql, params)
            .await
            .map(|_| ())
            .map_err(|e| format!("acme storage: {e}"))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn account(&self, directory: &str) -> Result<Option<String>, String> {
        Ok(self
            .query_opt(
                "SELECT credentials FROM gatehouse_acme_accounts WHERE directory = $1",
                &[&directory],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), String> {
        self.execute(
            "INSERT INTO gatehouse_acme_accounts (directory, credentials) VALUES ($1, $2)
             ON CONFLICT (directory) DO UPDATE SET credentials = EXCLUDED.credentials",
            &[&directory, &credentials],
        )
        .await
    }

    async fn certificate(&self, name: &str) -> Result<Option<Stored>, String> {
        Ok(self
            .query_opt(
                "SELECT chain_pem, key_pem FROM gatehouse_acme_certificates WHERE name = $1",
                &[&name],
            )
            .await?
            .map(|r| Stored {
                chain_pem: r.get(0),
                key_pem: r.get(1),
            }))
    }

    async fn save_certificate(&self, name: &str, cert: &Stored) -> Result<(), String> {
        self.execute(
            "INSERT INTO gatehouse_acme_certificates (name, chain_pem, key_pem) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
             SET chain_pem = EXCLUDED.chain_pem, key_pem = EXCLUDED.key_pem, updated_at = now()",
            &[&name, &cert.chain_pem, &cert.key_pem],
        )
        .await
    }

    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.execute(
            "INSERT INTO gatehouse_acme_challenges (token, key_authorization) VALUES ($1, $2)
             ON CONFLICT (token) DO UPDATE SET key_authorization = EXCLUDED.key_authorization",
            &[&token, &key_authorization],
        )
        .await
    }

    async fn challenge(&self, token: &str) -> Result<Option<String>, String> {
        Ok(self
            .query_opt(
                "SELECT key_authorization FROM gatehouse_acme_challenges WHERE token = $1",
                &[&token],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn remove_challenge(&self, token: &str) -> Result<(), String> {
        self.execute(
            "DELETE FROM gatehouse_acme_challenges WHERE token = $1 OR created_at < now() - interval '1 day'",
            &[&token],
        )
        .await
    }

    async fn try_lock(&self) -> Result<bool, String> {
        Ok(self
            .query_opt("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await?
            .is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn unlock(&self) {
        if let Err(e) = self
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await
        {
            // A broken connection released the lock with it.
            tracing::warn!(error = %e, "acme storage: releasing the ordering lock");
        }
    }

    fn shared(&self) -> bool {
        true
    }
}
