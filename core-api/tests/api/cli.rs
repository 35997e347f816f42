//! The `core-api` binary: `check` on every committed configuration, and the errors an operator
//! sees for a bad file or a missing variable.

use std::path::PathBuf;
use std::process::Command;

use secrecy::ExposeSecret;

fn repo_config(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")).join(name)
}

fn core_api() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_core-api"));
    for var in [
        "DATABASE_URL",
        "JWT_SIGNING_KEY",
        "JWT_SIGNING_KEY_FILE",
        "JWT_ISSUER",
        "PORT",
        "APP_ENV",
    ] {
        c.env_remove(var);
    }
    c
}

fn run(c: &mut Command) -> (bool, String) {
    let out = c.output().expect("run core-api");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_committed_config_checks() {
    let key = core_api::auth::keys::generate_ed25519_pem().expect("key");
    for env in ["development", "staging", "production"] {
        let (ok, text) = run(core_api()
            .args(["check", "--config"])
            .arg(repo_config("core-api.toml"))
            .env("APP_ENV", env)
            .env(
                "DATABASE_URL",
                "postgres://app:secret@db.internal:5432/app?sslmode=require",
            )
            .env("JWT_SIGNING_KEY", key.expose_secret())
            .env("JWT_ISSUER", "https://api.example.com"));
        assert!(ok, "{env}: {text}");
        assert!(text.contains("ok: ") && text.contains(env), "{text}");
    }
}

#[test]
fn missing_variables_are_named() {
    let (ok, text) = run(core_api()
        .args(["check", "--config"])
        .arg(repo_config("core-api.toml"))
        .env("APP_ENV", "production"));
    assert!(!ok);
    assert!(
        text.contains(
            "database.url: environment variable DATABASE_URL is not set (nor DATABASE_URL_FILE)"
        ),
        "{text}"
    );
    assert!(
        text.contains("auth.signing_key: environment variable JWT_SIGNING_KEY is not set"),
        "{text}"
    );
    assert!(
        text.contains("core-api.production.toml:"),
        "the overlay's issuer line is named: {text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn unknown_keys_and_bad_values_name_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("core-api-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let base = dir.join("core-api.toml");
    std::fs::write(&base, "[server]\nlisten = \"127.0.0.1:8000\"\n\n[database]\nurl = \"postgres://u:p@h/d\"\npool_sise = 3\n").expect("write");
    let (ok, text) = run(core_api()
        .args(["check", "--config"])
        .arg(&base)
        .env("APP_ENV", "development"));
    assert!(!ok);
    assert!(
        text.contains("core-api.toml:6: database.pool_sise: unknown field `pool_sise`"),
        "{text}"
    );

    std::fs::write(
        &base,
        "[server]\nlisten = \"nowhere\"\n[auth]\nbcrypt_cost = 8\nhash_nice = 20\n",
    )
    .expect("write");
    let (ok, text) = run(core_api()
        .args(["check", "--config"])
        .arg(&base)
        .env("APP_ENV", "development")
        .env("DATABASE_URL", "postgres://u:p@h/d"));
    assert!(!ok);
    assert!(text.contains("core-api.toml:2: server.listen"), "{text}");
    assert!(
        text.contains("core-api.toml:4: auth.bcrypt_cost: must be between 10 and 16"),
        "{text}"
    );
    assert!(
        text.contains("core-api.toml:5: auth.hash_nice: must be between 0 and 19"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keygen_prints_a_usable_key() {
    let (ok, text) = run(core_api().arg("keygen"));
    assert!(ok, "{text}");
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    let (ok, out) = run(core_api()
        .args(["check", "--config"])
        .arg(repo_config("core-api.toml"))
        .env("APP_ENV", "production")
        .env("DATABASE_URL", "postgres://u:p@h/d")
        .env("JWT_SIGNING_KEY", text.trim())
        .env("JWT_ISSUER", "https://x"));
    assert!(ok, "{out}");
}

/// ES256 and RS256 signing keys (from openssl, as an operator would make them) load, and their
/// public halves are published.
#[test]
fn es256_and_rs256_keys_load() {
    let dir = std::env::temp_dir().join(format!("core-api-alg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (alg, genpkey) in [
        (
            "ES256",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "RS256",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
    ] {
        let key = dir.join(format!("{alg}.pem"));
        let status = Command::new("openssl")
            .arg("genpkey")
            .args(&genpkey)
            .arg("-out")
            .arg(&key)
            .status()
            .expect("openssl");
        assert!(status.success());
        let base = dir.join("core-api.toml");
        std::fs::write(
            &base,
            format!("[database]\nurl = \"${{DATABASE_URL}}\"\n[auth]\nalgorithm = \"{alg}\"\nsigning_key = \"${{JWT_SIGNING_KEY}}\"\n"),
        )
        .expect("write");
        let (ok, text) = run(core_api()
            .args(["check", "--config"])
            .arg(&base)
            .env("APP_ENV", "production")
            .env("DATABASE_URL", "postgres://u:p@h/d")
            .env("JWT_SIGNING_KEY_FILE", &key));
        assert!(ok, "{alg}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container HEALTHCHECK: exit 0 against a serving API, non-zero against a closed port.
#[tokio::test]
async fn healthcheck_probes_the_running_api() {
    let app = crate::helpers::spawn_app().await;
    let port = app.addr.port().to_string();
    let (ok, text) =
        tokio::task::spawn_blocking(move || run(core_api().args(["healthcheck", "--port", &port])))
            .await
            .expect("join");
    assert!(ok, "{text}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (ok, text) = run(core_api().args(["healthcheck", "--port", &closed.to_string()]));
    assert!(!ok);
    assert!(text.contains("/healthz"), "{text}");
}
