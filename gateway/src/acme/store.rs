//! Where ACME state lives: the account credentials (one account per directory URL, created
//! once), the issued certificates with their keys, and HTTP-01 answers. `files` keeps them
//! under a directory with atomic writes and 0600 keys; `postgres` keeps them in tables so every
//! gateway instance serves the same certificates and answers any HTTP-01 challenge, and a
//! session advisory lock lets exactly one instance order at a time.
//!
//! HTTP-01 answers never cost a query per request: every instance keeps them in memory, read
//! again from the table when a trigger on it notifies (`LISTEN`/`NOTIFY`, delivered at commit)
//! and every [`HEARTBEAT`]. Each instance then records which answers it holds (an ack per token
//! and a heartbeat row), so the ordering instance can wait until every live instance holds a new
//! answer before it asks the CA to validate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard, mpsc};

/// HTTP-01 answers by token, as every instance holds them in memory.
pub type Answers = ArcSwap<HashMap<String, String>>;

/// How often an instance reads the answers again without a notification, and proves it lives.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// An instance whose heartbeat is older than this is no longer waited for.
pub const LIVE_WINDOW_SECS: u32 = 15;

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
    async fn remove_challenge(&self, token: &str) -> Result<(), String>;
    /// Waits until every live instance holds the answer for `token` in memory, at most
    /// `timeout`; how many live instances did not confirm it.
    async fn await_propagation(&self, token: &str, timeout: Duration) -> Result<usize, String>;
    /// Keeps `into` equal to the stored HTTP-01 answers, as instance `instance`, until the task
    /// running it is dropped (shared storage only; returns at once otherwise).
    async fn follow_challenges(
        &self,
        instance: &str,
        into: &Answers,
        reads: &prometheus::IntCounter,
    );
    /// Takes the right to order (false: another instance holds it now).
    async fn try_lock(&self) -> Result<bool, String>;
    async fn unlock(&self);
    /// Shared between instances: other instances must learn this one's HTTP-01 answers.
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

    async fn remove_challenge(&self, _token: &str) -> Result<(), String> {
        Ok(())
    }

    async fn await_propagation(&self, _token: &str, _timeout: Duration) -> Result<usize, String> {
        Ok(0)
    }

    async fn follow_challenges(&self, _: &str, _: &Answers, _: &prometheus::IntCounter) {}

    async fn try_lock(&self) -> Result<bool, String> {
        Ok(true)
    }

    async fn unlock(&self) {}

    fn shared(&self) -> bool {
        false
    }
}

/// Created on first use, one instance at a time (the transaction-scoped advisory lock keeps
/// concurrent starts from colliding on the catalog).
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7454303626354617710);
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
);
CREATE TABLE IF NOT EXISTS gatehouse_acme_instances (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gatehouse_acme_challenge_acks (
    token    text NOT NULL,
    instance text NOT NULL,
    PRIMARY KEY (token, instance)
);
CREATE OR REPLACE FUNCTION gatehouse_acme_challenges_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_acme_challenges', '');
    RETURN NULL;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'gatehouse_acme_challenges_notify'
                     AND tgrelid = 'gatehouse_acme_challenges'::regclass) THEN
        CREATE TRIGGER gatehouse_acme_challenges_notify
            AFTER INSERT OR UPDATE OR DELETE ON gatehouse_acme_challenges
            FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_acme_challenges_changed();
    END IF;
END $$;
COMMIT;";

/// Every change to `gatehouse_acme_challenges` is announced here (by the trigger above, so
/// writers of any version announce theirs).
const CHANNEL: &str = "gatehouse_acme_challenges";

/// A connection whose notifications arrive on the receiver (coalesced: one pending is enough
/// to read again); the receiver closes when the connection does.
async fn listening_client(
    url: &str,
) -> Result<(tokio_postgres::Client, mpsc::Receiver<()>), String> {
    let mut opts = gatehouse_common::pg::ConnectOptions::parse(url)
        .map_err(|e| format!("acme storage: database_url {e}"))?;
    opts.pg.connect_timeout(Duration::from_secs(5));
    let tls = opts.tls_connector()?;
    let (client, mut conn) = opts
        .pg
        .connect(tls)
        .await
        .map_err(|e| format!("acme storage: cannot connect: {e}"))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = tx.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "acme storage: listening connection closed");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, rx))
}

/// The advisory lock key of the ordering right ("gatehouse acme" in ASCII, truncated).
const LOCK_KEY: i64 = 0x6761_7465_6163_6d65;

/// `postgres`: one connection (reopened when it breaks), which also holds the advisory lock.
pub struct PgStore {
    url: String,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl PgStore {
    /// One connection of its own that listens on [`CHANNEL`]: reads the answers on every
    /// notification and every [`HEARTBEAT`], then records the tokens held and the heartbeat.
    /// Returns why it stopped (the connection broke).
    async fn follow_once(
        &self,
        instance: &str,
        into: &Answers,
        reads: &prometheus::IntCounter,
        synced: &mut bool,
    ) -> String {
        let (client, mut notes) = match listening_client(&self.url).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let step = async {
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| format!("creating tables: {e}"))?;
            // Listening first: no change between the read below and LISTEN goes unnoticed.
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let rows = client
                    .query(
                        "SELECT token, key_authorization FROM gatehouse_acme_challenges
                         WHERE created_at > now() - interval '1 day'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                reads.inc();
                let answers: HashMap<String, String> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let tokens: Vec<String> = answers.keys().cloned().collect();
                into.store(Arc::new(answers));
                *synced = true;
                // Only now that they are in memory: this instance holds these answers.
                client
                    .execute(
                        "INSERT INTO gatehouse_acme_challenge_acks (token, instance)
                         SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
                        &[&tokens, &instance],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                client
                    .execute(
                        "INSERT INTO gatehouse_acme_instances (id, seen_at) VALUES ($1, now())
                         ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                        &[&instance],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::select! {
                    note = notes.recv() => {
                        if note.is_none() {
                            return Err::<(), String>("the connection closed".into());
                        }
                        // Several changes in a row need one read.
                        while notes.try_recv().is_ok() {}
                    }
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        };
        match step.await {
            Ok(()) => "stopped".into(),
            Err(e) => format!("acme storage: {e}"),
        }
    }

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

    async fn remove_challenge(&self, token: &str) -> Result<(), String> {
        self.execute(
            "DELETE FROM gatehouse_acme_challenges WHERE token = $1 OR created_at < now() - interval '1 day'",
            &[&token],
        )
        .await?;
        // Acks of answers that are gone, and instances silent for an hour.
        self.execute(
            "DELETE FROM gatehouse_acme_challenge_acks a
             WHERE NOT EXISTS (SELECT 1 FROM gatehouse_acme_challenges c WHERE c.token = a.token)",
            &[],
        )
        .await?;
        self.execute(
            "DELETE FROM gatehouse_acme_instances WHERE seen_at < now() - interval '1 hour'",
            &[],
        )
        .await
    }

    async fn await_propagation(&self, token: &str, timeout: Duration) -> Result<usize, String> {
        let sql = format!(
            "SELECT count(*) FROM gatehouse_acme_instances i
             WHERE i.seen_at > now() - interval '{LIVE_WINDOW_SECS} seconds'
               AND NOT EXISTS (SELECT 1 FROM gatehouse_acme_challenge_acks a
                               WHERE a.token = $1 AND a.instance = i.id)"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let missing: i64 = self
                .query_opt(&sql, &[&token])
                .await?
                .map_or(0, |r| r.get(0));
            if missing == 0 || Instant::now() >= deadline {
                return Ok(usize::try_from(missing).unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn follow_challenges(
        &self,
        instance: &str,
        into: &Answers,
        reads: &prometheus::IntCounter,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut synced = false;
            let e = self.follow_once(instance, into, reads, &mut synced).await;
            if synced {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!(
                error = %e,
                retry_in_seconds = backoff.as_secs(),
                "HTTP-01 answers: lost the shared storage; answering from the last ones read"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
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
