//! Owner-scoped task CRUD, pagination, validation, the cross-user matrix and row-level security.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestUser, connect, spawn_app};

fn task_path(user: &TestUser, id: &str) -> String {
    format!("/api/users/{}/tasks/{id}", user.id)
}

#[tokio::test]
async fn create_read_update_delete() {
    let app = spawn_app().await;
    let u = app.user().await;
    let r = app.create_task(&u, json!({"title": "  Buy milk  ", "description": "2 litres", "due_at": "2030-01-31T17:00:00+01:00"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.header("location"), Some(task_path(&u, &id).as_str()));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["title"], "Buy milk");
    assert_eq!(r.body["description"], "2 litres");
    assert_eq!(r.body["completed"], false);
    assert_eq!(r.body["due_at"], "2030-01-31T16:00:00Z");
    let keys: Vec<&str> = r
        .body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "completed",
            "created_at",
            "description",
            "due_at",
            "id",
            "title",
            "updated_at"
        ]
    );

    let g = app.get(&task_path(&u, &id), Some(&u.access)).await;
    assert_eq!((g.status, &g.body), (200, &r.body));

    let p = app
        .patch(
            &task_path(&u, &id),
            json!({"completed": true, "description": null}),
            &u.access,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["completed"], true);
    assert_eq!(p.body["description"], Value::Null);
    assert_eq!(p.body["title"], "Buy milk", "absent fields are left alone");
    assert_eq!(p.body["due_at"], "2030-01-31T16:00:00Z");
    assert_ne!(p.body["updated_at"], r.body["updated_at"]);

    let p = app
        .patch(
            &task_path(&u, &id),
            json!({"title": "Buy oat milk", "due_at": null}),
            &u.access,
        )
        .await;
    assert_eq!(
        (p.body["title"].as_str(), p.body["due_at"].clone()),
        (Some("Buy oat milk"), Value::Null)
    );

    let d = app.delete(&task_path(&u, &id), &u.access).await;
    assert_eq!(d.status, 204);
    assert_eq!(
        app.get(&task_path(&u, &id), Some(&u.access)).await.status,
        404
    );
    assert_eq!(app.delete(&task_path(&u, &id), &u.access).await.status, 404);
}

#[tokio::test]
async fn task_validation() {
    let app = spawn_app().await;
    let u = app.user().await;
    let r = app
        .create_task(
            &u,
            json!({"title": "   ", "description": "x".repeat(4001), "due_at": "tomorrow"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["errors"],
        json!([
            {"field": "title", "message": "must not be empty"},
            {"field": "description", "message": "must be at most 4000 characters"},
            {"field": "due_at", "message": "must be an RFC 3339 date-time like 2026-01-31T17:00:00Z"}
        ])
    );
    let r = app.create_task(&u, json!({"title": "x".repeat(201)})).await;
    assert_eq!(
        r.body["errors"],
        json!([{"field": "title", "message": "must be at most 200 characters"}])
    );
    assert_eq!(
        app.create_task(&u, json!({"title": "é".repeat(200)}))
            .await
            .status,
        201
    );
    let r = app
        .create_task(&u, json!({"title": "ok", "completed": "yes"}))
        .await;
    assert_eq!(
        r.body["errors"],
        json!([{"field": "completed", "message": "is not a known field"}])
    );
    let created = app.create_task(&u, json!({"title": "ok"})).await;
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    let r = app.patch(&task_path(&u, &id), json!({}), &u.access).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "body");
    let r = app
        .patch(&task_path(&u, &id), json!({"completed": "yes"}), &u.access)
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "completed");
    let r = app
        .get(
            &format!("{}?limit=0&completed=maybe", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(
        r.body["errors"],
        json!([
            {"field": "completed", "message": "must be true or false"},
            {"field": "limit", "message": "must be an integer from 1 to 100"}
        ])
    );
    let r = app
        .get(
            &format!("{}?cursor=bogus", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(
        r.body["errors"],
        json!([{"field": "cursor", "message": "is not a cursor returned by this API"}])
    );
    let r = app
        .get(
            &format!("{}?sort=title", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn keyset_pagination_and_completed_filter() {
    let app = spawn_app().await;
    let u = app.user().await;
    for i in 0..25 {
        let r = app
            .create_task(&u, json!({"title": format!("task {i:02}")}))
            .await;
        assert_eq!(r.status, 201);
        if i % 5 == 0 {
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            app.patch(&task_path(&u, &id), json!({"completed": true}), &u.access)
                .await;
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=10&cursor={c}"),
            None => "?limit=10".to_string(),
        };
        let r = app
            .get(&format!("{}{q}", app.tasks_path(u.id)), Some(&u.access))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        pages += 1;
        seen.extend(
            r.body["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| t["title"].as_str().unwrap_or_default().to_string()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|i| format!("task {i:02}")).collect();
    assert_eq!(seen, expected, "newest first, nothing skipped or repeated");

    let done = app
        .get(
            &format!("{}?completed=true", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    let titles: Vec<&str> = done.body["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["title"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        titles,
        ["task 20", "task 15", "task 10", "task 05", "task 00"]
    );
    assert_eq!(done.body["next_cursor"], Value::Null);
    let open = app
        .get(
            &format!("{}?completed=false&limit=100", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(open.body["items"].as_array().map(Vec::len), Some(20));
    let page = app
        .get(
            &format!("{}?completed=false&limit=15", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    let next = page.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rest = app
        .get(
            &format!(
                "{}?completed=false&limit=15&cursor={next}",
                app.tasks_path(u.id)
            ),
            Some(&u.access),
        )
        .await;
    assert_eq!(rest.body["items"].as_array().map(Vec::len), Some(5));
}

/// User B against user A's data: 403 on A's `{user_id}` paths, 404 on A's task ids under B's own
/// path, for every method; nothing of A's changes.
#[tokio::test]
async fn cross_user_matrix() {
    let app = spawn_app().await;
    let a = app.user().await;
    let b = app.user().await;
    let created = app.create_task(&a, json!({"title": "A's secret"})).await;
    let a_task = created.body["id"].as_str().unwrap_or_default().to_string();

    // B on A's paths: 403, with a problem body that reveals nothing.
    let forbidden = [
        app.get(&app.tasks_path(a.id), Some(&b.access)).await,
        app.post(
            &app.tasks_path(a.id),
            json!({"title": "planted"}),
            Some(&b.access),
        )
        .await,
        app.get(&task_path(&a, &a_task), Some(&b.access)).await,
        app.patch(
            &task_path(&a, &a_task),
            json!({"title": "pwned"}),
            &b.access,
        )
        .await,
        app.delete(&task_path(&a, &a_task), &b.access).await,
    ];
    for r in &forbidden {
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(
            r.problem(),
            json!({"type": "forbidden", "title": "Forbidden", "status": 403,
                   "detail": "You may only access your own resources."})
        );
    }
    // B asking for A's task id under B's own path: 404, never revealing it exists.
    for r in [
        app.get(&task_path(&b, &a_task), Some(&b.access)).await,
        app.patch(
            &task_path(&b, &a_task),
            json!({"title": "pwned"}),
            &b.access,
        )
        .await,
        app.delete(&task_path(&b, &a_task), &b.access).await,
    ] {
        assert_eq!(r.status, 404);
        assert_eq!(
            r.problem(),
            json!({"type": "not_found", "title": "Not found", "status": 404})
        );
    }
    // B's own list does not contain A's task.
    let list = app.get(&app.tasks_path(b.id), Some(&b.access)).await;
    assert_eq!(list.body["items"], json!([]));
    // A's task is untouched.
    let still = app.get(&task_path(&a, &a_task), Some(&a.access)).await;
    assert_eq!(still.body["title"], "A's secret");
    // Not a UUID in the path: 403 for the user segment, 404 for the task segment.
    assert_eq!(
        app.get("/api/users/not-a-uuid/tasks", Some(&b.access))
            .await
            .status,
        403
    );
    assert_eq!(
        app.get(&task_path(&b, "not-a-uuid"), Some(&b.access))
            .await
            .status,
        404
    );
    // No token at all: 401 before anything else.
    assert_eq!(app.get(&app.tasks_path(a.id), None).await.status, 401);
}

/// Mass assignment: a body can never choose the owner.
#[tokio::test]
async fn body_owner_id_is_never_honoured() {
    let app = spawn_app().await;
    let a = app.user().await;
    let b = app.user().await;
    let r = app
        .create_task(&b, json!({"title": "mine", "owner_id": a.id}))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["errors"],
        json!([{"field": "owner_id", "message": "is not a known field"}])
    );
    let created = app.create_task(&b, json!({"title": "mine"})).await;
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    let r = app
        .patch(&task_path(&b, &id), json!({"owner_id": a.id}), &b.access)
        .await;
    assert_eq!(r.status, 422);
    // Checked as the superuser, which row-level security does not filter.
    let db = app.admin_db().await;
    let owners: Vec<Uuid> = db
        .query("SELECT owner_id FROM tasks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![b.id]);
}

/// Row-level security alone, as the application role and with no WHERE clause: only the
/// identity's rows, and none when the identity is unset.
#[tokio::test]
async fn row_level_security_is_a_second_wall() {
    let app = spawn_app().await;
    let a = app.user().await;
    let b = app.user().await;
    app.create_task(&a, json!({"title": "a1"})).await;
    app.create_task(&a, json!({"title": "a2"})).await;
    app.create_task(&b, json!({"title": "b1"})).await;
    let db = connect(&app.db_url).await;
    let is_super: bool = db
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!is_super, "the test role must be an ordinary role");

    let titles =
        |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    assert_eq!(
        titles(db.query("SELECT title FROM tasks", &[]).await.unwrap()),
        Vec::<String>::new(),
        "unset identity sees nothing"
    );

    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "SELECT set_config('app.user_id', $1, true)",
        &[&a.id.to_string()],
    )
    .await
    .unwrap();
    let mut seen = titles(db.query("SELECT title FROM tasks", &[]).await.unwrap());
    seen.sort();
    assert_eq!(seen, ["a1", "a2"]);
    // Writing a row for someone else is refused by the policy's WITH CHECK.
    let planted = db
        .execute(
            "INSERT INTO tasks (owner_id, title) VALUES ($1, 'planted')",
            &[&b.id],
        )
        .await;
    assert!(
        planted.is_err(),
        "RLS must refuse rows owned by another user"
    );
    db.batch_execute("ROLLBACK").await.unwrap();

    // Identity was transaction-local: gone again.
    assert_eq!(
        titles(db.query("SELECT title FROM tasks", &[]).await.unwrap()),
        Vec::<String>::new()
    );
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "SELECT set_config('app.user_id', $1, true)",
        &[&b.id.to_string()],
    )
    .await
    .unwrap();
    let n = db
        .execute("UPDATE tasks SET title = 'pwned'", &[])
        .await
        .unwrap();
    assert_eq!(n, 1, "an unscoped UPDATE touches only the identity's rows");
    db.batch_execute("ROLLBACK").await.unwrap();
}

/// The transaction-pooler mode (unnamed statements) serves the same API.
#[tokio::test]
async fn unnamed_statement_mode_serves_the_same_api() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.database.statement_mode = core_api::settings::StatementMode::Unnamed;
    })
    .await;
    let u = app.user().await;
    let r = app
        .create_task(
            &u,
            json!({"title": "pooled", "due_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap_or_default().to_string();
    let p = app
        .patch(&task_path(&u, &id), json!({"completed": true}), &u.access)
        .await;
    assert_eq!(p.body["completed"], true);
    let l = app
        .get(
            &format!("{}?completed=true", app.tasks_path(u.id)),
            Some(&u.access),
        )
        .await;
    assert_eq!(l.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        app.post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
            .await
            .status,
        200
    );
    assert_eq!(app.delete(&task_path(&u, &id), &u.access).await.status, 204);
}
