//! `gateway`: the Pingora edge of Gatehouse. Not built yet (tracked as its own issue); this
//! binary exists so the workspace, images and scripts have their final shape.

use clap::{Parser, Subcommand};

/// Gatehouse edge gateway (Pingora): TLS with ACME, routing, JWT, CORS and rate limits.
#[derive(Parser)]
#[command(name = "gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (not implemented yet).
    Run,
    /// Validate a configuration file (not implemented yet).
    Check,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Run => "run",
        Command::Check => "check",
    };
    eprintln!("gateway {what}: the gateway is not implemented yet; see the project's open issues");
    std::process::ExitCode::FAILURE
}
