//! The database path: connection options (libpq URL with `sslmode`/`sslrootcert`), the pool,
//! statement execution in both statement modes, and owner-scoped execution that sets the
//! row-level-security identity for exactly one transaction.
//!
//! A pooled connection goes back to the pool only when no transaction of ours can still be
//! open on it: [`InTransaction`] takes a connection whose transaction did not visibly end (a
//! panic or a cancelled request between `BEGIN` and `COMMIT`) out of the pool and closes it,
//! so PostgreSQL rolls the transaction back and no later statement (another user's, or an
//! autocommitted write) can run inside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::settings::{DatabaseSettings, StatementMode};

pub mod tasks;
pub mod users;

pub use gatehouse_common::pg::{ConnectOptions, TlsMode};

/// One statement parameter with its declared type (needed by unnamed statements, which carry
/// their parameter types instead of asking the server).
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Why a database operation failed, as the HTTP layer needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time, or the server went away: 503 + Retry-After.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The server answered with an error for this statement.
    #[error("database error: {0}")]
    Query(#[source] tokio_postgres::Error),
    /// A statement that always returns a row returned none.
    #[error("database invariant broken: {0}")]
    NoRow(&'static str),
}

impl DbError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Query(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Connection-level failures (no SQLSTATE, closed socket) and operator intervention /
        // connection / resource classes (57, 08, 53) mean "the database is not there".
        let unavailable = e.is_closed()
            || match e.code() {
                None => true,
                Some(code) => matches!(&code.code()[..2], "57" | "08" | "53"),
            };
        if unavailable {
            Self::Unavailable(e.to_string())
        } else {
            Self::Query(e)
        }
    }
}

impl From<PoolError> for DbError {
    /// Whatever kept the pool from handing out a connection (a timeout, a refused or closed
    /// socket, or PostgreSQL refusing the session: too many connections, a database not
    /// accepting connections (55000), a server starting up), no connection could be had: 503
    /// + Retry-After. The cause is logged with the request id.
    fn from(e: PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The pool plus how statements are sent.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    mode: StatementMode,
    fault: Arc<AtomicBool>,
}

/// A connection on which a transaction may be open. [`InTransaction::ended`] hands it back
/// once the transaction is known to be over; dropped otherwise (unwinding from a panic, or a
/// request future cancelled by its deadline), it is detached from the pool and closed.
struct InTransaction(Option<Object>);

impl InTransaction {
    fn client(&self) -> Result<&Object, DbError> {
        self.0
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("connection already released".into()))
    }

    /// COMMIT (or the error that ended the transaction) has been answered: the connection
    /// is clean and may be reused.
    fn ended(mut self) {
        drop(self.0.take());
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            tracing::warn!(
                "a database transaction did not finish (panic or cancelled request); \
                 closing its connection instead of reusing it"
            );
            // Detached from the pool: dropping the client closes the socket, and the server
            // rolls the transaction back.
            drop(Object::take(conn));
        }
    }
}

const SET_IDENTITY: &str = "SELECT set_config('app.user_id', $1, true)";

impl Db {
    /// Builds the pool; connections are opened lazily unless `open_all` is called.
    pub fn new(settings: &DatabaseSettings, url: &str) -> Result<Self, String> {
        let mut opts = ConnectOptions::parse(url).map_err(|e| format!("database.url {e}"))?;
        opts.pg.connect_timeout(settings.connect_timeout());
        opts.pg.application_name("gatehouse-core-api");
        let tls = opts.tls_connector()?;
        let mgr = Manager::from_config(
            opts.pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.acquire_timeout()))
            .create_timeout(Some(settings.connect_timeout()))
            .recycle_timeout(Some(settings.connect_timeout()))
            .build()
            .map_err(|e| format!("database pool: {e}"))?;
        Ok(Self {
            pool,
            mode: settings.statement_mode,
            fault: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Test hook: the next owner-scoped statement panics after `BEGIN` and the identity have
    /// been sent, the way a driver panic inside a handler would. Only reachable from Rust
    /// (the integration tests), never from a request.
    #[doc(hidden)]
    pub fn inject_panic_in_next_transaction(&self) {
        self.fault.store(true, Ordering::SeqCst);
    }

    fn fault_point(&self) {
        if self.fault.swap(false, Ordering::SeqCst) {
            panic!("injected fault: panic inside an open transaction");
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Opens every connection of the pool now (FR-012: the pool is really there at start-up).
    /// Returns how many could be opened.
    pub async fn open_all(&self) -> Result<usize, DbError> {
        let n = self.pool.status().max_size;
        let results = futures_util::future::join_all((0..n).map(|_| self.pool.get())).await;
        let mut opened = 0;
        let mut last_err = None;
        for r in results {
            match r {
                Ok(_) => opened += 1,
                Err(e) => last_err = Some(e),
            }
        }
        match (opened, last_err) {
            (0, Some(e)) => Err(e.into()),
            _ => Ok(opened),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Runs one statement in autocommit.
    pub async fn query(
        &self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.client().await?;
        Ok(self.run(&client, sql, params).await?)
    }

    /// Runs one statement as `owner` in its own transaction, with the row-level-security
    /// identity set for that transaction only (`set_config(…, true)`).
    ///
    /// BEGIN, the identity, the statement and COMMIT are pipelined: tokio-postgres sends a
    /// request when its future is first polled, and `join!` polls them in order, so the four
    /// go out back to back and cost one round trip. Should anything stop this between BEGIN
    /// and the answer to COMMIT (a panic while encoding a parameter, a cancelled request),
    /// the connection is closed rather than returned to the pool ([`InTransaction`]).
    pub async fn scoped(
        &self,
        owner: Uuid,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        let conn = InTransaction(Some(self.client().await?));
        let client = conn.client()?;
        let owner = owner.to_string();
        let (begin, identity, rows, commit) = match self.mode {
            StatementMode::Cached => {
                // Prepare first (cached after the first use) so that nothing is awaited
                // between the pipelined messages.
                let set = client
                    .prepare_typed_cached(SET_IDENTITY, &[Type::TEXT])
                    .await?;
                let (stmt, values) = prepare(client, sql, params).await?;
                let owner_param: [&(dyn ToSql + Sync); 1] = [&owner];
                tokio::join!(
                    client.batch_execute("BEGIN"),
                    client.query(&set, &owner_param),
                    async {
                        self.fault_point();
                        client.query(&stmt, &values).await
                    },
                    client.batch_execute("COMMIT"),
                )
            }
            StatementMode::Unnamed => {
                let owner_param: [Param<'_>; 1] = [(&owner, Type::TEXT)];
                tokio::join!(
                    client.batch_execute("BEGIN"),
                    client.query_typed(SET_IDENTITY, &owner_param),
                    async {
                        self.fault_point();
                        client.query_typed(sql, params).await
                    },
                    client.batch_execute("COMMIT"),
                )
            }
        };
        // Every message was answered (or the connection broke): no transaction is open.
        conn.ended();
        begin?;
        identity?;
        let rows = rows?;
        commit?;
        Ok(rows)
    }

    async fn run(
        &self,
        client: &deadpool_postgres::Object,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match self.mode {
            StatementMode::Cached => {
                let (stmt, values) = prepare(client, sql, params).await?;
                client.query(&stmt, &values).await
            }
            StatementMode::Unnamed => client.query_typed(sql, params).await,
        }
    }

    /// Readiness: a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Whether the connected role escapes row-level security (superuser or BYPASSRLS), which
    /// would silently remove the second wall.
    pub async fn role_bypasses_rls(&self) -> Result<bool, DbError> {
        let rows = self
            .query(
                "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, bool>(0)).unwrap_or(false))
    }
}

/// The cached named statement for `sql` and the bare parameter values to bind to it.
async fn prepare<'p>(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &'p [Param<'p>],
) -> Result<(tokio_postgres::Statement, Vec<&'p (dyn ToSql + Sync)>), tokio_postgres::Error> {
    let types: Vec<Type> = params.iter().map(|p| p.1.clone()).collect();
    let stmt = client.prepare_typed_cached(sql, &types).await?;
    Ok((stmt, params.iter().map(|p| p.0).collect()))
}
