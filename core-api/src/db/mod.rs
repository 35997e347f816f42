//! The database path: connection options (libpq URL with `sslmode`/`sslrootcert`), the pool,
//! statement execution in both statement modes, and owner-scoped execution that sets the
//! row-level-security identity for exactly one transaction.
//!
//! No transaction of ours can stay open on a pooled connection: the identity and the statement
//! go out as one pipeline that ends in its Sync, where PostgreSQL ends the implicit transaction
//! whatever happens to the request afterwards (a panic, a cancelled request); a panic before
//! it is sent sends nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{PipelineQuery, Row};
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

    /// Test hook: the next owner-scoped statement panics once its connection is taken and its
    /// statements prepared, just before the pipeline is sent, the way a panic while encoding a
    /// parameter would. Only reachable from Rust (the integration tests), never from a request.
    #[doc(hidden)]
    pub fn inject_panic_in_next_transaction(&self) {
        self.fault.store(true, Ordering::SeqCst);
    }

    fn fault_point(&self) {
        if self.fault.swap(false, Ordering::SeqCst) {
            panic!("injected fault: panic while an owner-scoped statement is being sent");
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
    /// The identity and the statement go out as one pipeline ending in a single Sync
    /// (`query_pipeline`, a patch of ours to tokio-postgres): PostgreSQL runs the two as one
    /// implicit transaction that ends at the Sync, commits only if both succeed, and drops the
    /// identity with it. One round trip and one flush each way. No transaction can be left
    /// open on a pooled connection: everything up to the Sync is encoded before anything is
    /// sent (a panic while encoding sends nothing) and then sent whole, so a request cancelled
    /// or panicking while it waits still ends its transaction on the server at the Sync.
    pub async fn scoped(
        &self,
        owner: Uuid,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.client().await?;
        let owner = owner.to_string();
        let owner_text: [&(dyn ToSql + Sync); 1] = [&owner];
        let owner_typed: [Param<'_>; 1] = [(&owner, Type::TEXT)];
        let prepared;
        let queries = match self.mode {
            StatementMode::Cached => {
                let set = client
                    .prepare_typed_cached(SET_IDENTITY, &[Type::TEXT])
                    .await?;
                prepared = (set, prepare(&client, sql, params).await?);
                let (set, (stmt, values)) = &prepared;
                [
                    PipelineQuery::Prepared(set, &owner_text),
                    PipelineQuery::Prepared(stmt, values),
                ]
            }
            StatementMode::Unnamed => [
                PipelineQuery::Typed(SET_IDENTITY, &owner_typed),
                PipelineQuery::Typed(sql, params),
            ],
        };
        self.fault_point();
        let mut results = client.query_pipeline(&queries).await?;
        results
            .pop()
            .ok_or(DbError::NoRow("a pipeline answers every statement"))
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
