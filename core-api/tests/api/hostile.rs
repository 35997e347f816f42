//! Hostile input and faults: each test sends what an attacker sent and asserts that the answer
//! is a clean problem, that nothing is left half-done in PostgreSQL, and that every other user
//! keeps being served.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{open_transactions, spawn_app, spawn_app_with};

fn field_errors(body: &Value) -> Vec<(String, String)> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap_or_default().to_string(),
                        e["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The original report: a due date whose UTC instant is in year 10000 made the driver panic
/// inside an open transaction; ten of them exhausted the pool.
#[tokio::test]
async fn due_dates_outside_rfc3339_years_are_refused_before_the_database() {
    let app = spawn_app().await;
    let u = app.user().await;
    let task_path = app.task_of(&u).await;
    for due in [
        "9999-12-31T23:59:59-00:01",
        "0000-01-01T00:00:00+00:01",
        "0000-01-01T00:00:00Z",
        "9999-01-01T00:00:00Z",
        " 2026-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
    ] {
        // More than the pool's ten connections: none may be lost.
        for _ in 0..3 {
            let r = app
                .create_task(&u, json!({"title": "t", "due_at": due}))
                .await;
            assert_eq!(r.status, 422, "{due}: {}", r.text);
            assert_eq!(r.problem()["type"], "validation_failed");
            assert_eq!(field_errors(&r.body)[0].0, "due_at", "{due}");
            let r = app
                .patch(&task_path, json!({"due_at": due}), &u.access)
                .await;
            assert_eq!(r.status, 422, "{due}: {}", r.text);
            assert_eq!(field_errors(&r.body)[0].0, "due_at");
        }
    }
    // The extremes that are allowed are stored and served back (UTC years 0000 and 9999).
    for (due, back) in [
        ("0001-01-01T00:00:00+23:59", "0000-12-31T00:01:00Z"),
        (
            "9998-12-31T23:59:59.9999999-23:59",
            "9999-01-01T23:58:59.999999Z",
        ),
    ] {
        let r = app
            .create_task(&u, json!({"title": "edge", "due_at": due}))
            .await;
        assert_eq!(r.status, 201, "{due}: {}", r.text);
        assert_eq!(r.body["due_at"], back);
    }
    let list = app.get(&app.tasks_path(u.id), Some(&u.access)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(3));
    assert!(open_transactions(app.db_url.rsplit('/').next().unwrap()).is_empty());
}

/// The database itself refuses a due date it could not serve back, whatever path writes it.
#[tokio::test]
async fn the_schema_refuses_unservable_due_dates() {
    let app = spawn_app().await;
    let u = app.user().await;
    let db = app.admin_db().await;
    let err = db
        .execute(
            "INSERT INTO tasks (owner_id, title, due_at) VALUES ($1, 't', '0002-01-01 BC')",
            &[&u.id],
        )
        .await
        .expect_err("out-of-range due_at stored");
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("tasks_due_at_rfc3339"),
        "{err:?}"
    );
}

#[tokio::test]
async fn control_characters_are_refused_in_every_text_field() {
    let app = spawn_app().await;
    let u = app.user().await;
    let task_path = app.task_of(&u).await;
    for (body, field) in [
        (
            json!({"title": "t", "description": "a\u{0}b"}),
            "description",
        ),
        (
            json!({"title": "t", "description": "bell\u{7}"}),
            "description",
        ),
        (
            json!({"title": "t", "description": "esc \u{1b}[31m"}),
            "description",
        ),
        (json!({"title": "nul\u{0}"}), "title"),
        (json!({"title": "c1\u{85}x"}), "title"),
    ] {
        let r = app.create_task(&u, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert_eq!(field_errors(&r.body)[0].0, field);
        let mut patch = body.clone();
        if field == "description" {
            patch.as_object_mut().unwrap().remove("title");
        }
        let r = app.patch(&task_path, patch, &u.access).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert_eq!(field_errors(&r.body)[0].0, field);
    }
    // Fields that cannot be null are not "absent" when sent as null.
    for (patch, field) in [
        (json!({"completed": null}), "completed"),
        (json!({"title": null}), "title"),
    ] {
        let r = app.patch(&task_path, patch.clone(), &u.access).await;
        assert_eq!(r.status, 422, "{patch}: {}", r.text);
        assert_eq!(field_errors(&r.body)[0].0, field);
    }
    // Tabs and line breaks are text.
    let r = app
        .create_task(
            &u,
            json!({"title": "t", "description": "line 1\r\n\tline 2"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A title is at most 200 characters as sent, surrounding spaces included.
    let r = app
        .create_task(&u, json!({"title": format!(" {}", "x".repeat(200))}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // E-mail addresses with control characters are refused like any malformed address.
    let r = app
        .register("nul\u{0}@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
}

/// Cursors are decoded by us: a forged one is a 422, never a database error.
#[tokio::test]
async fn forged_cursors_are_refused_and_an_empty_cursor_is_the_first_page() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = spawn_app().await;
    let u = app.user().await;
    app.create_task(&u, json!({"title": "t"})).await;
    let id = Uuid::new_v4();
    for raw in [
        format!("{}.{id}", i128::MAX),
        format!("-{}.{id}", 400_000_000_000_000_000i128),
        format!("{}.{id}", 300_000_000_000_000_000i128),
        format!("99999999999999999999999999999999999999.{id}"),
        "1.not-a-uuid".to_string(),
    ] {
        let cursor = URL_SAFE_NO_PAD.encode(raw.as_bytes());
        let r = app
            .get(
                &format!("{}?cursor={cursor}", app.tasks_path(u.id)),
                Some(&u.access),
            )
            .await;
        assert_eq!(r.status, 422, "{raw}: {}", r.text);
        assert_eq!(field_errors(&r.body)[0].0, "cursor");
    }
    let r = app
        .get(
            &format!("{}?cursor=", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
}

/// The panic boundary: a panic in the middle of an owner-scoped write (after the connection was
/// taken and the statement prepared, before the pipeline went out) is a 500 problem for that
/// request only; nothing of the write is stored, no transaction is left open, and every
/// connection of the pool serves the next requests.
#[tokio::test]
async fn a_panic_during_a_scoped_write_is_a_500_and_leaves_nothing_behind() {
    let app = spawn_app().await;
    let u = app.user().await;
    let other = app.user().await;
    app.state.db.inject_panic_in_next_transaction();
    let r = app.create_task(&u, json!({"title": "boom"})).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(
        r.problem(),
        json!({"type": "internal_error", "title": "Internal server error", "status": 500})
    );
    let db = app.db_url.rsplit('/').next().unwrap().to_string();
    assert!(open_transactions(&db).is_empty());
    let metrics = app.get("/metrics", None).await.text;
    assert!(
        metrics.contains("gatehouse_api_panics_total 1"),
        "{metrics}"
    );
    // Every connection of the pool is still usable, and autocommitted writes really commit.
    for i in 0..25 {
        let r = app
            .create_task(&other, json!({"title": format!("after {i}")}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let late = app.user().await;
    let rows = app
        .admin_db()
        .await
        .query("SELECT 1 FROM users WHERE id = $1", &[&late.id])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "a registration after the panic is committed");
    let boom = app
        .admin_db()
        .await
        .query("SELECT 1 FROM tasks WHERE title = 'boom'", &[])
        .await
        .unwrap();
    assert!(boom.is_empty());
}

/// RFC 9700 §4.14.2 under a race: the legitimate client rotates its token while an attacker
/// replays an older one of the same family. Whatever the interleaving, no token of the family
/// may work afterwards. The test forces the worst interleaving: the rotation is held on the
/// token's row lock, the revocation queues behind it, and the rotation commits first.
#[tokio::test]
async fn a_rotation_racing_a_reuse_revocation_leaves_no_live_token() {
    let app = spawn_app().await;
    let u = app.user().await;
    let first = u.refresh.clone();
    let r = app
        .post("/auth/refresh", json!({"refresh_token": first}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let current = r.body["refresh_token"].as_str().unwrap().to_string();

    // Hold the current token's row.
    let mut blocker = app.admin_db().await;
    let hold = blocker.transaction().await.unwrap();
    use sha2::Digest;
    let hash = sha2::Sha256::digest(current.as_bytes()).to_vec();
    hold.execute(
        "SELECT 1 FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        &[&hash],
    )
    .await
    .unwrap();

    let waiting = |n: i64| {
        let app = &app;
        async move {
            let db = app.admin_db().await;
            for _ in 0..200 {
                let w: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if w >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{n} statements never queued on the lock");
        }
    };
    let rotation = {
        let http = app.http.clone();
        let url = app.url("/auth/refresh");
        let token = current.clone();
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"refresh_token": token}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    waiting(1).await;
    let replay = {
        let http = app.http.clone();
        let url = app.url("/auth/refresh");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"refresh_token": first}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    waiting(2).await;
    hold.commit().await.unwrap();
    let rotated = rotation.await.unwrap();
    assert_eq!(replay.await.unwrap(), 401);
    // The rotation may have won its race, but the token it handed out died with the family.
    let issued = rotated["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !issued.is_empty(),
        "the rotation committed first: {rotated}"
    );
    let r = app
        .post("/auth/refresh", json!({"refresh_token": issued}), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.problem()["type"], "invalid_refresh_token");
    let revoked: bool = app
        .admin_db()
        .await
        .query_one(
            "SELECT bool_and(f.revoked_at IS NOT NULL) FROM refresh_families f WHERE f.user_id = $1",
            &[&u.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(revoked);
}

async fn login_from(
    app: &crate::helpers::TestApp,
    client: &str,
    email: &str,
    password: &str,
) -> crate::helpers::Resp {
    app.send(
        app.http
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

/// The original report: ten wrong passwords a minute from anyone kept the real user at 429.
#[tokio::test]
async fn a_guesser_is_throttled_without_locking_the_owner_out() {
    let app = spawn_app().await;
    let u = app.user().await;
    for _ in 0..10 {
        let r = login_from(&app, "203.0.113.7", &u.email, "wrong password!").await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let r = login_from(&app, "203.0.113.7", &u.email, &u.password).await;
    assert_eq!(
        r.status, 429,
        "even the right password is not tried: {}",
        r.text
    );
    assert_eq!(r.problem()["type"], "rate_limited");
    assert!(r.header("retry-after").is_some());
    // The same /64 is the same client for IPv6.
    for _ in 0..10 {
        login_from(&app, "2001:db8:7:7::1", &u.email, "wrong password!").await;
    }
    let r = login_from(&app, "2001:db8:7:7:ffff::2", &u.email, &u.password).await;
    assert_eq!(r.status, 429, "{}", r.text);
    // The owner, elsewhere, signs in.
    let r = login_from(&app, "198.51.100.2", &u.email, &u.password).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Forwarded-for is believed only from trusted proxies: the app trusts loopback here, so a
    // client cannot pick its own address by sending one through an untrusted hop.
    let r = login_from(&app, "10.9.9.9, 203.0.113.7", &u.email, &u.password).await;
    assert_eq!(r.status, 429, "{}", r.text);
}

/// Guessing spread over many addresses hits the per-account ceiling: strangers are throttled,
/// the address the owner signed in from before is not.
#[tokio::test]
async fn a_distributed_guess_throttles_strangers_but_not_the_owners_usual_client() {
    let app = spawn_app_with(|s| {
        s.auth.login_attempts_per_minute = 5;
        s.auth.login_account_failures_per_hour = 20;
    })
    .await;
    let u = app.user().await;
    assert_eq!(
        login_from(&app, "198.51.100.2", &u.email, &u.password)
            .await
            .status,
        200
    );
    for i in 0..20 {
        let r = login_from(&app, &format!("203.0.113.{i}"), &u.email, "wrong password!").await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let r = login_from(&app, "192.0.2.50", &u.email, &u.password).await;
    assert_eq!(r.status, 429, "{}", r.text);
    let r = login_from(&app, "198.51.100.2", &u.email, &u.password).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Another account is untouched.
    let v = app.user().await;
    assert_eq!(
        login_from(&app, "192.0.2.50", &v.email, &v.password)
            .await
            .status,
        200
    );
}
