//! TLS as a client other than ours sees it (Debian's OpenSSL `s_client`): TLS 1.2 and 1.3 only,
//! forward-secret AEAD suites only.

use std::process::{Command, Stdio};

use crate::helpers::{Echo, Gateway, Options, TestKey};

/// Runs `openssl s_client` against the gateway; returns whether a session was established and
/// what it printed.
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-brief"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (installed by make test)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let established = text.contains("CONNECTION ESTABLISHED");
    (established, text)
}

#[tokio::test]
async fn only_tls_12_and_13_with_forward_secret_aead_suites() {
    let key = TestKey::new(61);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start(Options::echo(&echo)).await;
    let port = gw.https;

    let (ok, text) = s_client(port, &["-tls1_3"]);
    assert!(ok, "TLS 1.3: {text}");
    let (ok, text) = s_client(
        port,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert!(ok, "TLS 1.2 with ECDHE + AES-GCM: {text}");

    // The client offers the old protocols for real (security level 0), and the gateway refuses.
    for old in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(port, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{old} was accepted: {text}");
        // The refusal is the server's alert, not the client declining to offer the protocol.
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{old}: {text}"
        );
    }
    // Static RSA key exchange (no forward secrecy) and CBC suites are never negotiated.
    for suite in [
        "AES128-GCM-SHA256",
        "AES256-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA",
    ] {
        let (ok, text) = s_client(port, &["-tls1_2", "-cipher", suite]);
        assert!(!ok, "{suite} was accepted: {text}");
        assert!(text.contains("alert handshake failure"), "{suite}: {text}");
    }
}
