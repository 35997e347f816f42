//! `gateway`: the Pingora edge of Gatehouse.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gatehouse_common::config::Environment;

// The request path allocates a lot in small pieces (headers, buffers); mimalloc's per-thread
// caches measured faster than glibc malloc there (bench/README.md). The `system-allocator`
// feature leaves glibc's malloc in place, for heap profilers that hook it (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse edge gateway (Pingora): TLS, routing, JWT, CORS and rate limits in front of the
/// core API.
///
/// Configuration: the base TOML file plus its overlay for APP_ENV (development, staging,
/// production; default production), e.g. config/gateway.toml + config/gateway.development.toml.
/// Values may use ${VAR} and ${VAR:-default}; every VAR may also come from VAR_FILE.
#[derive(Parser)]
#[command(name = "gateway", version, propagate_version = true)]
struct Cli {
    /// Base configuration file.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_CONFIG",
        default_value = "config/gateway.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM (graceful drain) or SIGQUIT (graceful upgrade hand-over).
    Run {
        /// Take the listening sockets over from a running gateway (binary upgrade), which is
        /// then sent SIGQUIT.
        #[arg(short = 'u', long)]
        upgrade: bool,
    },
    /// Compile the configuration as `run` would (every check, key files read, upstream names
    /// resolved, certificates loaded) without serving.
    Check,
    /// Exit 0 when the admin listener's /healthz answers 200 (container HEALTHCHECK).
    Healthcheck {
        #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
        admin: String,
    },
}

fn main() -> ExitCode {
    // One process-wide rustls provider, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Command::Healthcheck { admin } = &cli.command {
        return healthcheck(admin);
    }
    let env = match Environment::from_env() {
        Ok(e) => e,
        Err(e) => return fail(&e.to_string()),
    };
    let config = match gateway::settings::load(&cli.config, env) {
        Ok(c) => c,
        Err(e) => return fail(&format!("invalid configuration:\n{e}")),
    };
    let s = config.settings();
    // Request threads never write the log themselves (an access line per request); the guard
    // lives until `main` returns, which writes what is still buffered.
    let _log = gatehouse_common::telemetry::init_off_thread(s.log.format, &s.log.level);
    let metrics = match gateway::metrics::Metrics::new() {
        Ok(m) => Arc::new(m),
        Err(e) => return fail(&format!("metrics: {e}")),
    };
    // `check` and `run` share this one compile: whatever `run` would refuse, `check` refuses.
    let compiled = match gateway::compile::compile(&config, None, &metrics) {
        Ok(c) => c,
        Err(e) => return fail(&format!("invalid configuration:\n{e}")),
    };
    match cli.command {
        Command::Check => {
            let files: Vec<String> = config
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            println!("ok: {} ({})", files.join(" + "), config.env);
            ExitCode::SUCCESS
        }
        Command::Run { upgrade } => {
            match gateway::server::run(config, compiled, metrics, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("{e:#}")),
            }
        }
        Command::Healthcheck { .. } => ExitCode::SUCCESS,
    }
}

fn healthcheck(admin: &str) -> ExitCode {
    let Ok(addr) = admin.parse() else {
        return fail("--admin is not an address like 127.0.0.1:9090");
    };
    match gatehouse_common::healthcheck::probe(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("gateway: {msg}");
    ExitCode::FAILURE
}
