//! `core-api`: serve, migrate, check a configuration, or generate a signing key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use core_api::Application;
use gatehouse_common::config::Environment;
use secrecy::ExposeSecret;

// Every request allocates in small pieces (rows, JSON, headers, protocol buffers): under the
// list load glibc's malloc took ~13 % of the API's CPU (perf), mimalloc's per-thread caches
// less (bench/README.md). The `system-allocator` feature leaves glibc's malloc in place, for
// heap profilers that hook it (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse core API: accounts, tokens and owner-scoped tasks on PostgreSQL.
///
/// Configuration: the base TOML file plus its overlay for APP_ENV (development, staging,
/// production; default production), e.g. config/core-api.toml + config/core-api.production.toml.
/// Values may use ${VAR} and ${VAR:-default}; every VAR may also come from VAR_FILE.
/// PORT, when set, makes the API listen on 0.0.0.0:PORT.
#[derive(Parser)]
#[command(name = "core-api", version, propagate_version = true)]
struct Cli {
    /// Base configuration file.
    #[arg(
        long,
        global = true,
        env = "CORE_API_CONFIG",
        default_value = "config/core-api.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP until SIGTERM or Ctrl-C, then drain in-flight requests.
    Serve,
    /// Apply pending database migrations (use the direct, not the pooled, endpoint).
    Migrate,
    /// Validate the configuration and keys without serving; exits non-zero on any problem.
    Check,
    /// Print a new Ed25519 signing key (PKCS#8 PEM) for JWT_SIGNING_KEY.
    Keygen,
    /// Exit 0 when GET /healthz on this machine answers 200 (container HEALTHCHECK; the
    /// runtime image has no shell or curl).
    Healthcheck {
        /// Port to probe.
        #[arg(long, env = "PORT", default_value_t = 8000)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keygen = cli.command {
        return match core_api::auth::keys::generate_ed25519_pem() {
            Ok(pem) => {
                print!("{}", pem.expose_secret());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    if let Command::Healthcheck { port } = cli.command {
        return healthcheck(port);
    }
    let env = match Environment::from_env() {
        Ok(e) => e,
        Err(e) => return fail(&e.to_string()),
    };
    let config = match core_api::settings::load(&cli.config, env) {
        Ok(c) => c,
        Err(e) => return fail(&format!("invalid configuration:\n{e}")),
    };
    let s = &config.settings;
    gatehouse_common::telemetry::init(s.log.format, &s.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Check => {
                core_api::auth::keys::load(&config.settings.auth, config.env)
                    .map_err(anyhow::Error::msg)?;
                let files: Vec<String> = config
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                println!("ok: {} ({})", files.join(" + "), config.env);
                Ok(())
            }
            Command::Migrate => {
                let url = config.settings.database.url.expose_secret().to_string();
                let n = core_api::migrate::run(&url, config.settings.database.connect_timeout())
                    .await?;
                println!("migrations applied: {n}");
                Ok(())
            }
            Command::Serve => {
                Application::build(config)
                    .await?
                    .run(shutdown_signal())
                    .await
            }
            Command::Keygen | Command::Healthcheck { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn healthcheck(port: u16) -> ExitCode {
    match gatehouse_common::healthcheck::probe(std::net::SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("core-api: {msg}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
