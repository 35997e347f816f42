//! Hot reload: SIGHUP with a changed route while a client loop runs drops nothing; an invalid
//! file is refused and the running configuration keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::helpers::{Echo, Gateway, Options, TestConfig, TestKey};

#[tokio::test]
async fn sighup_reload_with_a_new_route_fails_no_request() {
    let key = TestKey::new(5);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Arc::new(Gateway::start(Options::echo(&echo)).await);
    assert_eq!(gw.get("/new/x", None).await.status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            // Keep-alive connections stay open across the reload.
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 20 {
                n += 1;
                match gw
                    .client
                    .get(gw.url("/open/loop"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut next = TestConfig::new(&Options::echo(&echo), gw.https, gw.http, gw.admin, &gw.dir);
    next.route("/new/", &[]);
    std::fs::write(&gw.config, next.to_string()).unwrap();
    gw.signal("HUP");
    let mut live = false;
    for _ in 0..50 {
        if gw.get("/new/x", None).await.status == 200 {
            live = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert!(live, "the new route serves after SIGHUP:\n{}", gw.log());
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} requests failed",
        failed.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) >= 80);
    let m = gw.admin("/metrics").await.text;
    assert!(
        m.contains(r#"gatehouse_gateway_reloads_total{outcome="ok"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let key = TestKey::new(6);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start(Options::echo(&echo)).await;
    let mut bad = TestConfig::parse(&std::fs::read_to_string(&gw.config).unwrap());
    // A typo in the first route's key.
    bad.remove("routes.0.prefix")
        .set("routes.0.prefx", "/open/");
    std::fs::write(&gw.config, bad.to_string()).unwrap();
    let r = gw.reload().await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["type"], "reload_refused");
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("gateway.toml:") && detail.contains("prefx"),
        "{detail}"
    );
    // SIGHUP with the same broken file: refused too, and the process keeps running.
    gw.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gw.get("/open/x", None).await.status, 200);
    let m = gw.admin("/metrics").await.text;
    assert!(
        m.contains(r#"gatehouse_gateway_reloads_total{outcome="rejected"} 2"#),
        "{m}"
    );
    gw.wait_log("configuration reload refused", 10).await;
}

/// Binary upgrade: a new process takes the listening sockets over (`run --upgrade`), the old
/// one gets SIGQUIT and drains; a client loop sees no failure.
#[tokio::test]
async fn graceful_upgrade_hands_sockets_over_without_failures() {
    let key = TestKey::new(8);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Arc::new(Gateway::start(Options::echo(&echo)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection every other request, keep-alive for the rest.
                let client = if ok.load(Ordering::Relaxed) % 2 == 0 {
                    gw.https_client(false)
                } else {
                    gw.client.clone()
                };
                let get = |c: reqwest::Client| {
                    let url = gw.url("/open/upgrade");
                    async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
                };
                let mut result = get(client).await;
                // A keep-alive connection the draining process closed just as a request went
                // out on it gets no response at all; RFC 9112 §9.3.1 has clients retry such an
                // idempotent request on a new connection, as browsers do. Any HTTP error
                // status still counts as a failure.
                if result.as_ref().is_err_and(reqwest::Error::is_request) {
                    result = get(gw.https_client(false)).await;
                }
                match result {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut new = gw.command(true).spawn().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    gw.signal("QUIT");
    // The new process must be the one answering now.
    let mut served_by_new = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if new.try_wait().unwrap().is_some() {
            break;
        }
        let old_gone = !std::path::Path::new(&format!("/proc/{}", gw.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", gw.pid()))
                .is_ok_and(|s| s.contains(") Z "));
        if old_gone {
            served_by_new = true;
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        served_by_new,
        "old process exited and the new one kept serving:\n{}",
        gw.log()
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20);
}

/// `scripts/gateway-swap.sh`: deploy a new binary and roll back to the previous one while a
/// client loop runs; no request fails and each step is served by the expected binary.
#[tokio::test]
async fn the_swap_script_upgrades_and_rolls_back_under_load() {
    let key = TestKey::new(9);
    let echo = Echo::start(key.jwks.clone()).await;
    let dir = std::env::temp_dir().join(format!("gw-swap-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (https, http, admin) = (
        crate::helpers::free_port(),
        crate::helpers::free_port(),
        crate::helpers::free_port(),
    );
    let config = dir.join("gateway.toml");
    let settings = TestConfig::new(&Options::echo(&echo), https, http, admin, &dir);
    std::fs::write(&config, settings.to_string()).unwrap();
    // Two distinguishable binaries: v2 is v1 with bytes appended (still the same program).
    let v1 = dir.join("gateway");
    std::fs::copy(env!("CARGO_BIN_EXE_gateway"), &v1).unwrap();
    let v2 = dir.join("gateway-v2");
    let mut bytes = std::fs::read(&v1).unwrap();
    bytes.extend_from_slice(b"\n# gatehouse v2\n");
    std::fs::write(&v2, &bytes).unwrap();
    std::fs::set_permissions(&v2, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (v1_len, v2_len) = (
        std::fs::metadata(&v1).unwrap().len(),
        std::fs::metadata(&v2).unwrap().len(),
    );
    let swap = {
        let dir = dir.clone();
        move |args: Vec<String>| {
            let out = std::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../scripts/gateway-swap.sh"
                ))
                .args(&args)
                .env("GATEWAY_DIR", &dir)
                .env("GATEWAY_CONFIG", dir.join("gateway.toml"))
                .env("GATEWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("APP_ENV", "development")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success(),
                "{args:?}: {text}\n{}",
                std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
            );
            text
        }
    };
    let running_len = |dir: &std::path::Path| {
        let pid = std::fs::read_to_string(dir.join("gateway.pid")).unwrap();
        std::fs::metadata(format!("/proc/{}/exe", pid.trim()))
            .unwrap()
            .len()
    };
    swap(vec!["start".into()]);
    assert_eq!(running_len(&dir), v1_len);

    let ca = std::fs::read(dir.join("certs/ca.pem")).unwrap();
    let client = |keep_alive: bool| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .http1_only();
        if !keep_alive {
            b = b.pool_max_idle_per_host(0);
        }
        b.build().unwrap()
    };
    let (keep, fresh) = (client(true), client(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let url = format!("https://localhost:{https}/open/swap");
            while !stop.load(Ordering::Relaxed) {
                let c = if ok.load(Ordering::Relaxed) % 2 == 0 {
                    &fresh
                } else {
                    &keep
                };
                let mut result = c.get(&url).send().await.map(|r| r.status().as_u16());
                // A keep-alive connection closed by the draining process as the request went
                // out: clients retry that on a new connection (RFC 9112 §9.3.1).
                if result.as_ref().is_err_and(reqwest::Error::is_request) {
                    result = fresh.get(&url).send().await.map(|r| r.status().as_u16());
                }
                match result {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = swap.clone();
    let v2_path = v2.display().to_string();
    let said = tokio::task::spawn_blocking(move || s(vec!["upgrade".into(), v2_path]))
        .await
        .unwrap();
    assert!(said.contains("upgraded"), "{said}");
    assert_eq!(running_len(&dir), v2_len, "v2 serves after the upgrade");
    let s = swap.clone();
    let said = tokio::task::spawn_blocking(move || s(vec!["rollback".into()]))
        .await
        .unwrap();
    assert!(said.contains("rolled back"), "{said}");
    assert_eq!(
        running_len(&dir),
        v1_len,
        "v1 serves again after the rollback"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    swap(vec!["stop".into()]);
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20);
    let _ = std::fs::remove_dir_all(&dir);
}
