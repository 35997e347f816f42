//! The `gateway` binary's `check` on every committed configuration, and operator errors.

use std::path::PathBuf;
use std::process::Command;

fn repo_config() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/gateway.toml"
    ))
}

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for v in [
        "APP_ENV",
        "JWT_ISSUER",
        "FRONTEND_ORIGIN",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "JWKS_URL",
        "RUST_LOG",
        "GATEWAY_HTTPS_LISTEN",
        "GATEWAY_HTTP_MODE",
        "PORT",
        "TLS_SOURCE",
        "API_UPSTREAM",
        "TRUSTED_PROXIES",
        "ACME_DOMAIN",
        "ACME_CONTACT",
        "ACME_DIRECTORY",
        "ACME_STORAGE",
        "ACME_DIR",
        "ACME_DATABASE_URL",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(c: &mut Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A fresh directory holding `gateway.toml` with `text`: the directory and the file.
fn config_file(text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gw-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

/// `gateway <command> --config <config>` with `APP_ENV=<env>`: success, and what it printed.
fn gateway_on(command: &str, config: &std::path::Path, env: &str) -> (bool, String) {
    run(gateway()
        .args([command, "--config"])
        .arg(config)
        .env("APP_ENV", env))
}

#[test]
fn every_committed_config_checks() {
    let dir = std::env::temp_dir().join(format!("gw-cli-{}", uuid::Uuid::new_v4().simple()));
    gateway::tls::self_signed(&["api.example.com".into()], &dir).unwrap();
    for env in ["development", "staging", "production"] {
        let (ok, text) = run(gateway()
            .args(["check", "--config"])
            .arg(repo_config())
            .current_dir(&dir)
            .env("APP_ENV", env)
            .env("JWT_ISSUER", "https://api.example.com")
            .env("FRONTEND_ORIGIN", "https://app.example.com")
            .env("TLS_CERT_FILE", dir.join("gateway.pem"))
            .env("TLS_KEY_FILE", dir.join("gateway.key")));
        assert!(ok, "{env}: {text}");
        assert!(text.contains("ok: ") && text.contains(env), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_file_line_and_key() {
    let (ok, text) = run(gateway()
        .args(["check", "--config"])
        .arg(repo_config())
        .env("APP_ENV", "production"));
    assert!(!ok);
    assert!(text.contains("gateway.production.toml:5: cors.web.origins.0: environment variable FRONTEND_ORIGIN is not set"), "{text}");
    assert!(
        text.contains("jwt.issuer: environment variable JWT_ISSUER is not set"),
        "{text}"
    );

    let (dir, base) = config_file(
        "[tls]\nsource = \"self-signed\"\n\n[jwt]\nissuer = \"x\"\n\n[[routes]]\nprefix = \"api\"\nupstream = \"nowhere\"\n",
    );
    let (ok, text) = gateway_on("check", &base, "production");
    assert!(!ok);
    assert!(
        text.contains(
            "gateway.toml:2: tls.source: self-signed certificates are for development only"
        ),
        "{text}"
    );
    assert!(
        text.contains("gateway.toml:8: routes.0.prefix: must start with /"),
        "{text}"
    );
    assert!(
        text.contains("gateway.toml:9: routes.0.upstream: no [upstreams.nowhere]"),
        "{text}"
    );
    std::fs::write(&base, "[server]\nthreds = 2\n").unwrap();
    let (_, text) = run(gateway().args(["check", "--config"]).arg(&base));
    assert!(
        text.contains("gateway.toml:2: server.threds: unknown field `threds`"),
        "{text}"
    );
    // Pingora would read 0 as "keep idle connections forever".
    std::fs::write(&base, "[server]\nkeepalive_timeout_seconds = 0\n").unwrap();
    let (ok, text) = run(gateway().args(["check", "--config"]).arg(&base));
    assert!(!ok);
    assert!(
        text.contains("gateway.toml:2: server.keepalive_timeout_seconds: must be at least 1"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acme_settings_errors_name_the_key_and_line() {
    let (dir, config) = config_file(
        "[tls]\nsource = \"acme\"\n\n[tls.acme]\ndirectory = \"http://ca.example/dir\"\ndomains = [\"*.example.com\", \"127.0.0.1\"]\nstorage = \"postgres\"\n\n[jwt]\nissuer = \"https://api.example.com\"\n",
    );
    let (ok, text) = gateway_on("check", &config, "development");
    assert!(!ok);
    for needle in [
        "tls.acme.directory",
        "https://",
        "tls.acme.domains.0",
        "wildcards need DNS-01",
        "tls.acme.domains.1",
        "IP addresses",
        "tls.acme.database_url",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(
        text.contains("gateway.toml:5"),
        "line of tls.acme.directory: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped configuration in the shapes the deployment files use: TLS at a platform (HTTPS
/// off, plain-HTTP proxy on $PORT), ACME, files; and the mistakes each can carry.
#[test]
fn shipped_config_for_platforms_acme_and_files() {
    let base = |env: &str| {
        let mut c = gateway();
        c.args(["check", "--config"])
            .arg(repo_config())
            .env("APP_ENV", env)
            .env("JWT_ISSUER", "https://api.example.com")
            .env("FRONTEND_ORIGIN", "https://app.example.com");
        c
    };
    let (ok, text) = run(base("production")
        .env("GATEWAY_HTTPS_LISTEN", "")
        .env("GATEWAY_HTTP_MODE", "proxy")
        .env("PORT", "10000")
        // A host name, as on a platform; `check` resolves it like `run` does.
        .env("API_UPSTREAM", "localhost:8000")
        .env("TRUSTED_PROXIES", "10.0.0.0/8, 172.16.0.0/12"));
    assert!(ok, "behind a platform: {text}");
    let (ok, text) = run(base("production").env("GATEWAY_HTTPS_LISTEN", ""));
    assert!(
        !ok && text.contains("http_mode must be \"proxy\""),
        "{text}"
    );
    let (ok, text) = run(base("staging")
        .env("TLS_SOURCE", "acme")
        .env("ACME_DOMAIN", "api.example.com")
        .env("ACME_CONTACT", "mailto:ops@example.com"));
    assert!(ok, "acme: {text}");
    let (ok, text) = run(base("staging").env("TLS_SOURCE", "acme"));
    assert!(!ok && text.contains("tls.acme.domains.0"), "{text}");
    let (ok, text) = run(&mut base("production"));
    assert!(
        !ok && text.contains("TLS_CERT_FILE"),
        "files without a certificate: {text}"
    );
    let (ok, text) = run(base("production")
        .env("GATEWAY_HTTPS_LISTEN", "")
        .env("GATEWAY_HTTP_MODE", "proxy")
        .env("TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip"));
    assert!(
        !ok && text.contains("server.trusted_proxies.0") && text.contains("not-an-ip"),
        "{text}"
    );
}

/// Issue 9: settings that would open a hole are refused with file, line and key.
#[test]
fn hostile_input_settings_are_refused_with_key_and_line() {
    let (dir, config) = config_file(
        "[tls]\nsource = \"self-signed\"\n\n[jwt]\nissuer = \"https://api.example.com\"\nmin_refetch_seconds = 0\n\n[limits.by_sub]\nkey = \"subject\"\nipv6_prefix = 64\n\n[limits.wide]\nipv6_prefix = 8\n\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n\n[upstreams.api]\ntargets = [\"127.0.0.1:8000\"]\n\n[admin]\ntoken = \"too-short\"\nallowed_hosts = [\"10.0.0.1\"]\n\n[limits.fast]\nper_second = 2000000\n",
    );
    let (ok, text) = gateway_on("check", &config, "development");
    assert!(!ok, "{text}");
    for needle in [
        "gateway.toml:6: jwt.min_refetch_seconds: must be at least 1",
        "gateway.toml:10: limits.by_sub.ipv6_prefix: only limits with key = \"ip\"",
        "gateway.toml:13: limits.wide.ipv6_prefix: 8 is not a prefix length between 32 and 128",
        "gateway.toml:23: admin.token: must be at least 32 characters",
        "gateway.toml:24: admin.allowed_hosts.0: \"10.0.0.1\" is not a host name",
        // Past a million a second the limiter's microsecond cannot tell rates apart.
        "limits.fast: per_second must be at most 1000000",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check` compiles what `run` compiles: a key file it cannot read and an upstream name that
/// does not resolve fail `check` too, each with file, line and key (issue 11).
#[test]
fn check_fails_where_run_would_fail() {
    let missing =
        std::env::temp_dir().join(format!("no-such-key-{}.pem", uuid::Uuid::new_v4().simple()));
    let (dir, config) = config_file(&format!(
        "[listen]\nhttps = \"\"\nhttp_mode = \"proxy\"\n\n[jwt]\nissuer = \"https://api.example.com\"\njwks_url = \"\"\n\n[[jwt.key_files]]\nkid = \"k1\"\nalgorithm = \"EdDSA\"\npath = \"{}\"\n\n[upstreams.api]\ntargets = [\"127.0.0.1:8000\", \"api.invalid:8000\"]\n\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n",
        missing.display()
    ));
    for command in ["check", "run"] {
        let (ok, text) = gateway_on(command, &config, "development");
        assert!(!ok, "{command}: {text}");
        for needle in [
            "gateway.toml:12: jwt.key_files.0.path: ",
            ".pem: cannot read",
            "gateway.toml:15: upstreams.api.targets.1: api.invalid:8000: cannot resolve",
        ] {
            assert!(text.contains(needle), "{command}: {needle}: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
