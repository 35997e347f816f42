//! Schema migrations from `migrations/` (plain SQL), embedded at build time and applied by
//! refinery, which records them in `refinery_schema_history`.

use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Applies pending migrations; returns how many were applied.
pub async fn run(url: &str, connect_timeout: Duration) -> anyhow::Result<usize> {
    let mut client = gatehouse_common::pg::connect_once(url, connect_timeout, "migrations")
        .await
        .map_err(anyhow::Error::msg)?;
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "migration applied");
    }
    Ok(report.applied_migrations().len())
}
