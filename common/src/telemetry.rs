//! Logging set-up: JSON lines outside development, human-readable in development.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// The `[log]` section both services share.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `level` when set. Safe to call twice
/// (tests build several apps in one process): later calls are no-ops.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match format {
        // JSON escapes control characters, which keeps user input from forging log lines.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Short, non-reversible fingerprint of a secret for log correlation (never the secret itself).
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
