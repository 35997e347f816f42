//! Task storage: every statement on `tasks`, each owner-scoped twice — `owner_id = $1` in the
//! SQL and the row-level-security identity of [`Db::scoped`] — with one column list and one
//! builder for the four list queries.

use std::sync::LazyLock;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::{Db, DbError};
use crate::domain::{Cursor, NewTask, TaskChanges, TaskDescription, TaskTitle};

/// The columns of a task, in the order [`Task::from_row`] reads them.
const COLUMNS: &str = "id, title, description, completed, due_at, created_at, updated_at";

/// A stored task as the API returns it.
#[derive(Debug, Serialize)]
pub struct Task {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Task {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: r.try_get(0)?,
            title: r.try_get(1)?,
            description: r.try_get(2)?,
            completed: r.try_get(3)?,
            due_at: r.try_get(4)?,
            created_at: r.try_get(5)?,
            updated_at: r.try_get(6)?,
        })
    }

    fn all(rows: &[Row]) -> Result<Vec<Self>, DbError> {
        Ok(rows.iter().map(Self::from_row).collect::<Result<_, _>>()?)
    }

    fn first(rows: &[Row]) -> Result<Option<Self>, DbError> {
        Ok(rows.first().map(Self::from_row).transpose()?)
    }

    /// The keyset position after this task.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// What a list asks for.
pub struct ListFilter {
    pub completed: Option<bool>,
    pub after: Option<Cursor>,
    /// Rows to fetch (the caller asks for one more than a page to learn whether more exist).
    pub limit: i64,
}

/// The list statement for a filter shape. Parameters: `$1` owner, `$2` limit, then the
/// cursor's `$3` created_at and `$4` id when paging, then `completed`.
fn list_sql(completed: bool, after: bool) -> &'static str {
    static SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
        let build = |completed: bool, after: bool| {
            let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE owner_id = $1");
            let mut next = 3;
            if after {
                sql.push_str(" AND (created_at, id) < ($3, $4)");
                next = 5;
            }
            if completed {
                sql.push_str(&format!(" AND completed = ${next}"));
            }
            sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT $2");
            sql
        };
        [
            build(false, false),
            build(true, false),
            build(false, true),
            build(true, true),
        ]
    });
    &SQL[usize::from(completed) + 2 * usize::from(after)]
}

/// The owner's tasks, newest first.
pub async fn list(db: &Db, owner: Uuid, filter: &ListFilter) -> Result<Vec<Task>, DbError> {
    let sql = list_sql(filter.completed.is_some(), filter.after.is_some());
    let (after_at, after_id) = filter.after.as_ref().map(|c| (c.created_at, c.id)).unzip();
    let mut params: Vec<super::Param<'_>> = vec![(&owner, Type::UUID), (&filter.limit, Type::INT8)];
    if filter.after.is_some() {
        params.push((&after_at, Type::TIMESTAMPTZ));
        params.push((&after_id, Type::UUID));
    }
    if let Some(done) = &filter.completed {
        params.push((done, Type::BOOL));
    }
    Task::all(&db.scoped(owner, sql, &params).await?)
}

pub async fn create(db: &Db, owner: Uuid, task: &NewTask) -> Result<Task, DbError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO tasks (owner_id, title, description, due_at) VALUES ($1, $2, $3, $4) \
             RETURNING {COLUMNS}"
        )
    });
    let description = task.description.as_ref().map(TaskDescription::as_str);
    let rows = db
        .scoped(
            owner,
            &INSERT,
            &[
                (&owner, Type::UUID),
                (&task.title.as_str(), Type::TEXT),
                (&description, Type::TEXT),
                (&task.due_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Task::first(&rows)?.ok_or(DbError::NoRow("INSERT … RETURNING"))
}

pub async fn get(db: &Db, owner: Uuid, id: Uuid) -> Result<Option<Task>, DbError> {
    static SELECT: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM tasks WHERE owner_id = $1 AND id = $2"));
    let rows = db
        .scoped(owner, &SELECT, &[(&owner, Type::UUID), (&id, Type::UUID)])
        .await?;
    Task::first(&rows)
}

/// Applies `changes`; `None` when the task is not the owner's (or does not exist).
pub async fn update(
    db: &Db,
    owner: Uuid,
    id: Uuid,
    changes: &TaskChanges,
) -> Result<Option<Task>, DbError> {
    static UPDATE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE tasks SET \
             title = COALESCE($3, title), \
             description = CASE WHEN $4 THEN $5 ELSE description END, \
             completed = COALESCE($6, completed), \
             due_at = CASE WHEN $7 THEN $8 ELSE due_at END, \
             updated_at = clock_timestamp() \
             WHERE owner_id = $1 AND id = $2 \
             RETURNING {COLUMNS}"
        )
    });
    let title = changes.title.as_ref().map(TaskTitle::as_str);
    let set_description = changes.description.is_some();
    let description = changes
        .description
        .as_ref()
        .and_then(|d| d.as_ref().map(TaskDescription::as_str));
    let set_due = changes.due_at.is_some();
    let due_at = changes.due_at.flatten();
    let rows = db
        .scoped(
            owner,
            &UPDATE,
            &[
                (&owner, Type::UUID),
                (&id, Type::UUID),
                (&title, Type::TEXT),
                (&set_description, Type::BOOL),
                (&description, Type::TEXT),
                (&changes.completed, Type::BOOL),
                (&set_due, Type::BOOL),
                (&due_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Task::first(&rows)
}

/// Whether the owner had such a task (now deleted).
pub async fn delete(db: &Db, owner: Uuid, id: Uuid) -> Result<bool, DbError> {
    let rows = db
        .scoped(
            owner,
            "DELETE FROM tasks WHERE owner_id = $1 AND id = $2 RETURNING id",
            &[(&owner, Type::UUID), (&id, Type::UUID)],
        )
        .await?;
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_builder_numbers_its_parameters_like_list_binds_them() {
        assert_eq!(
            list_sql(false, false),
            "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
             WHERE owner_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        assert!(list_sql(true, false).contains("AND completed = $3 ORDER"));
        assert!(list_sql(false, true).contains("AND (created_at, id) < ($3, $4) ORDER"));
        assert!(list_sql(true, true).contains("< ($3, $4) AND completed = $5 ORDER"));
    }
}
