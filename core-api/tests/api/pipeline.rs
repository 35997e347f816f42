//! The database path's pipeline: the row-level-security identity and the statement go out
//! with one Sync (`Db::scoped` on tokio-postgres's `query_pipeline`, a patch of ours; see
//! `vendor/README.md`). What must hold: the statements run as one transaction, the identity
//! ends with it, and nothing of a failed pipeline is committed, in both statement modes.

use core_api::db::DbError;
use core_api::settings::StatementMode;
use tokio_postgres::PipelineQuery;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::helpers::{open_transactions, spawn_app_with};

const IDENTITY: &str = "SELECT coalesce(current_setting('app.user_id', true), '')";

/// A scoped statement sees its owner's identity; no connection of the pool keeps it afterwards
/// (the identity ends with the pipeline's implicit transaction), and none is left inside a
/// transaction.
#[tokio::test]
async fn the_identity_holds_for_its_statement_and_ends_with_it() {
    for mode in [StatementMode::Cached, StatementMode::Unnamed] {
        let app = spawn_app_with(|s| {
            s.database.statement_mode = mode;
            s.database.pool_size = 2;
        })
        .await;
        let u = app.user().await;
        for _ in 0..4 {
            let rows = app.state.db.scoped(u.id, IDENTITY, &[]).await.unwrap();
            assert_eq!(rows[0].get::<_, String>(0), u.id.to_string(), "{mode:?}");
            let rows = app.state.db.query(IDENTITY, &[]).await.unwrap();
            assert_eq!(
                rows[0].get::<_, String>(0),
                "",
                "{mode:?}: identity outlived its pipeline"
            );
        }
        // A failing statement: its error, and the identity still ends.
        let err = app
            .state
            .db
            .scoped(u.id, "SELECT 1 / 0", &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DbError::Query(e) if e.code() == Some(&SqlState::DIVISION_BY_ZERO)),
            "{mode:?}: {err:?}"
        );
        for _ in 0..2 {
            let rows = app.state.db.query(IDENTITY, &[]).await.unwrap();
            assert_eq!(rows[0].get::<_, String>(0), "", "{mode:?}");
        }
        let db = app.db_url.rsplit('/').next().unwrap().to_string();
        assert!(open_transactions(&db).is_empty(), "{mode:?}");
    }
}

/// The driver's pipeline itself: each statement's rows in order; an error in a later statement
/// rolls back the earlier ones (one implicit transaction) and leaves the connection usable;
/// outside the pipeline nothing of it remains.
#[tokio::test]
async fn a_pipeline_is_one_transaction_all_or_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin_db().await;
    admin
        .batch_execute("CREATE TABLE pipeline_probe (n int PRIMARY KEY)")
        .await
        .unwrap();
    let insert = admin
        .prepare("INSERT INTO pipeline_probe VALUES ($1) RETURNING n")
        .await
        .unwrap();
    let count = "SELECT count(*)::int FROM pipeline_probe";
    let one = 1i32;
    let two = 2i32;

    let results = admin
        .query_pipeline(&[
            PipelineQuery::Prepared(&insert, &[&one]),
            PipelineQuery::Typed("SELECT set_config('probe.x', 'on', true)", &[]),
            PipelineQuery::Typed(count, &[]),
            PipelineQuery::Typed(
                "SELECT n FROM pipeline_probe WHERE n = $1",
                &[(&two, Type::INT4)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0][0].get::<_, i32>(0), 1);
    assert_eq!(results[1][0].get::<_, String>(0), "on");
    assert_eq!(
        results[2][0].get::<_, i32>(0),
        1,
        "a later statement sees an earlier one"
    );
    assert!(results[3].is_empty());

    // The second insert collides with the first row: the pipeline fails and its other insert
    // (3) is rolled back with it; the statement after the failure never ran.
    let three = 3i32;
    let err = admin
        .query_pipeline(&[
            PipelineQuery::Prepared(&insert, &[&three]),
            PipelineQuery::Prepared(&insert, &[&one]),
            PipelineQuery::Prepared(&insert, &[&two]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    let rows = admin
        .query("SELECT n FROM pipeline_probe ORDER BY n", &[])
        .await
        .unwrap();
    let left: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(left, [1], "nothing of the failed pipeline is committed");
    let setting = admin
        .query_one("SELECT coalesce(current_setting('probe.x', true), '')", &[])
        .await
        .unwrap();
    assert_eq!(
        setting.get::<_, String>(0),
        "",
        "a local setting ends with its pipeline"
    );

    // A parameter that cannot be encoded: an error, and nothing is sent.
    let text = "not a number";
    let err = admin
        .query_pipeline(&[
            PipelineQuery::Prepared(&insert, &[&three]),
            PipelineQuery::Prepared(&insert, &[&text]),
        ])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("error serializing parameter"),
        "{err}"
    );
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pipeline_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "nothing of a pipeline that failed to encode reached the server"
    );
}
