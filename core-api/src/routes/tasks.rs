//! `/api/users/{user_id}/tasks…`: owner-scoped task CRUD with keyset pagination.
//!
//! Two walls: every statement carries `owner_id = $1` from the verified token, and runs with
//! the row-level-security identity set to the same user (`Db::scoped`).

use gatehouse_common::problem::FieldError;
use http::header::LOCATION;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::app::{AppState, Ctx};
use crate::domain::{Cursor, Fields, TaskDescription, TaskTitle, parse_rfc3339};
use crate::error::ApiError;
use crate::http::{Body, empty, json, parse_query, read_json};

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

#[derive(Serialize)]
pub struct TaskOut {
    id: Uuid,
    title: String,
    description: Option<String>,
    completed: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    due_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<&Row> for TaskOut {
    fn from(r: &Row) -> Self {
        Self {
            id: r.get(0),
            title: r.get(1),
            description: r.get(2),
            completed: r.get(3),
            due_at: r.get(4),
            created_at: r.get(5),
            updated_at: r.get(6),
        }
    }
}

#[derive(Serialize)]
struct Page {
    items: Vec<TaskOut>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    completed: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    due_at: Option<String>,
}

/// PATCH body: an absent field is left alone, `null` clears a nullable one. `title` and
/// `completed` are not nullable, so `null` there is refused rather than read as "absent".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "nullable")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    completed: Option<Option<bool>>,
    #[serde(default, deserialize_with = "nullable")]
    due_at: Option<Option<String>>,
}

/// A present, non-nullable PATCH field: `null` is a field error.
fn required<T>(value: Option<Option<T>>, field: &str, what: &str) -> Result<Option<T>, FieldError> {
    match value {
        None => Ok(None),
        Some(Some(v)) => Ok(Some(v)),
        Some(None) => Err(FieldError::new(field, format!("must be {what}, not null"))),
    }
}

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A valid new task.
struct NewTask {
    title: TaskTitle,
    description: Option<TaskDescription>,
    due_at: Option<OffsetDateTime>,
}

impl NewTask {
    /// Every field checked, every problem reported.
    fn parse(body: CreateBody) -> Result<Self, Vec<FieldError>> {
        let mut fields = Fields::default();
        let title = fields.take(TaskTitle::parse(&body.title));
        let description = fields.take(body.description.map(TaskDescription::parse).transpose());
        let due_at = fields.take(
            body.due_at
                .as_deref()
                .map(|d| parse_rfc3339(d, "due_at"))
                .transpose(),
        );
        fields.finish()?;
        match (title, description, due_at) {
            (Some(title), Some(description), Some(due_at)) => Ok(Self {
                title,
                description,
                due_at,
            }),
            _ => Err(vec![FieldError::new("body", "is invalid")]),
        }
    }
}

/// A valid PATCH: `None` leaves a field alone; for the nullable ones `Some(None)` clears it.
struct TaskChanges {
    title: Option<TaskTitle>,
    completed: Option<bool>,
    description: Option<Option<TaskDescription>>,
    due_at: Option<Option<OffsetDateTime>>,
}

impl TaskChanges {
    fn parse(body: PatchBody) -> Result<Self, Vec<FieldError>> {
        let mut fields = Fields::default();
        if body.title.is_none()
            && body.description.is_none()
            && body.completed.is_none()
            && body.due_at.is_none()
        {
            fields.push(FieldError::new(
                "body",
                "must set at least one of title, description, completed, due_at",
            ));
        }
        // Each is `Some(parsed)` when valid (the inner Option: absent), `None` after an error.
        let title = fields.take(
            required(body.title, "title", "a string")
                .and_then(|t| t.as_deref().map(TaskTitle::parse).transpose()),
        );
        let completed = fields.take(required(body.completed, "completed", "true or false"));
        let description = fields.take(
            body.description
                .map(|d| d.map(TaskDescription::parse).transpose())
                .transpose(),
        );
        let due_at = fields.take(
            body.due_at
                .map(|d| d.as_deref().map(|s| parse_rfc3339(s, "due_at")).transpose())
                .transpose(),
        );
        fields.finish()?;
        match (title, completed, description, due_at) {
            (Some(title), Some(completed), Some(description), Some(due_at)) => Ok(Self {
                title,
                completed,
                description,
                due_at,
            }),
            _ => Err(vec![FieldError::new("body", "is invalid")]),
        }
    }
}

/// The caller's own scope: `{user_id}` must be the verified subject (403 otherwise).
fn owner(
    state: &AppState,
    req: &Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
) -> Result<Uuid, ApiError> {
    let sub = state.authenticate(req.headers(), ctx)?;
    match Uuid::parse_str(user_id) {
        Ok(id) if id == sub => Ok(sub),
        _ => {
            state.metrics.auth_failure("forbidden");
            tracing::warn!(request_id = %ctx.request_id, user_id = %sub, path_user = %user_id.escape_debug(), "authorization denied: path user is not the token subject");
            Err(ApiError::Forbidden)
        }
    }
}

/// The caller's scope and the task id. A task id outside the caller's scope, or not a UUID at
/// all, is simply not found.
fn task_scope(
    state: &AppState,
    req: &Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<(Uuid, Uuid), ApiError> {
    let owner = owner(state, req, ctx, user_id)?;
    let id = Uuid::parse_str(task).map_err(|_| ApiError::NotFound)?;
    Ok((owner, id))
}

/// The one task a statement returned, or 404.
fn single(rows: &[Row]) -> Result<TaskOut, ApiError> {
    rows.first().map(TaskOut::from).ok_or(ApiError::NotFound)
}

pub async fn list(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
) -> Result<Response<Body>, ApiError> {
    let owner = owner(state, &req, ctx, user_id)?;
    let q: ListQuery = parse_query(req.uri().query())?;
    let mut fields = Fields::default();
    let completed = fields.take(match q.completed.as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(FieldError::new("completed", "must be true or false")),
    });
    let limit = fields.take(match q.limit.as_deref().map(str::parse::<i64>) {
        None => Ok(DEFAULT_LIMIT),
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(FieldError::new("limit", "must be an integer from 1 to 100")),
    });
    // An empty cursor is the first page, like an absent one (`?cursor=` from a client that
    // echoes a null next_cursor).
    let cursor = fields.take(
        q.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(Cursor::decode)
            .transpose(),
    );
    fields.finish().map_err(ApiError::Validation)?;
    let (Some(completed), Some(limit), Some(cursor)) = (completed, limit, cursor) else {
        return Err(ApiError::Internal("parsed fields missing".into()));
    };

    // One more row than asked tells whether a next page exists.
    let fetch = limit + 1;
    let (c_at, c_id) = cursor.as_ref().map(|c| (c.created_at, c.id)).unzip();
    let rows = match (completed, cursor) {
        (None, None) => {
            state
                .db
                .scoped(owner, LIST, &[(&owner, Type::UUID), (&fetch, Type::INT8)])
                .await?
        }
        (Some(done), None) => {
            state
                .db
                .scoped(
                    owner,
                    LIST_DONE,
                    &[
                        (&owner, Type::UUID),
                        (&fetch, Type::INT8),
                        (&done, Type::BOOL),
                    ],
                )
                .await?
        }
        (None, Some(_)) => {
            state
                .db
                .scoped(
                    owner,
                    LIST_AFTER,
                    &[
                        (&owner, Type::UUID),
                        (&fetch, Type::INT8),
                        (&c_at, Type::TIMESTAMPTZ),
                        (&c_id, Type::UUID),
                    ],
                )
                .await?
        }
        (Some(done), Some(_)) => {
            state
                .db
                .scoped(
                    owner,
                    LIST_DONE_AFTER,
                    &[
                        (&owner, Type::UUID),
                        (&fetch, Type::INT8),
                        (&c_at, Type::TIMESTAMPTZ),
                        (&c_id, Type::UUID),
                        (&done, Type::BOOL),
                    ],
                )
                .await?
        }
    };
    let more = rows.len() as i64 > limit;
    let items: Vec<TaskOut> = rows
        .iter()
        .take(limit as usize)
        .map(TaskOut::from)
        .collect();
    let next_cursor = if more {
        items.last().map(|t| {
            Cursor {
                created_at: t.created_at,
                id: t.id,
            }
            .encode()
        })
    } else {
        None
    };
    json(StatusCode::OK, &Page { items, next_cursor })
}

const LIST: &str = "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
    WHERE owner_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2";
const LIST_DONE: &str = "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
    WHERE owner_id = $1 AND completed = $3 ORDER BY created_at DESC, id DESC LIMIT $2";
const LIST_AFTER: &str = "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
    WHERE owner_id = $1 AND (created_at, id) < ($3, $4) ORDER BY created_at DESC, id DESC LIMIT $2";
const LIST_DONE_AFTER: &str = "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
    WHERE owner_id = $1 AND (created_at, id) < ($3, $4) AND completed = $5 \
    ORDER BY created_at DESC, id DESC LIMIT $2";

pub async fn create(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
) -> Result<Response<Body>, ApiError> {
    let owner = owner(state, &req, ctx, user_id)?;
    let (parts, body) = req.into_parts();
    let body: CreateBody = read_json(&parts.headers, body, state.body_limit()).await?;
    let NewTask {
        title,
        description,
        due_at,
    } = NewTask::parse(body).map_err(ApiError::Validation)?;
    let description = description.as_ref().map(TaskDescription::as_str);
    let rows = state
        .db
        .scoped(
            owner,
            INSERT,
            &[
                (&owner, Type::UUID),
                (&title.as_str(), Type::TEXT),
                (&description, Type::TEXT),
                (&due_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let task = rows
        .first()
        .map(TaskOut::from)
        .ok_or_else(|| ApiError::Internal("insert returned nothing".into()))?;
    let mut resp = json(StatusCode::CREATED, &task)?;
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/users/{owner}/tasks/{}", task.id)) {
        resp.headers_mut().insert(LOCATION, loc);
    }
    Ok(resp)
}

const INSERT: &str = "INSERT INTO tasks (owner_id, title, description, due_at) VALUES ($1, $2, $3, $4) \
    RETURNING id, title, description, completed, due_at, created_at, updated_at";

pub async fn get(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<Response<Body>, ApiError> {
    let (owner, id) = task_scope(state, &req, ctx, user_id, task)?;
    let rows = state
        .db
        .scoped(
            owner,
            SELECT_ONE,
            &[(&owner, Type::UUID), (&id, Type::UUID)],
        )
        .await?;
    json(StatusCode::OK, &single(&rows)?)
}

const SELECT_ONE: &str = "SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks \
    WHERE owner_id = $1 AND id = $2";

pub async fn update(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<Response<Body>, ApiError> {
    let (owner, id) = task_scope(state, &req, ctx, user_id, task)?;
    let (parts, body) = req.into_parts();
    let body: PatchBody = read_json(&parts.headers, body, state.body_limit()).await?;
    let TaskChanges {
        title,
        completed,
        description,
        due_at,
    } = TaskChanges::parse(body).map_err(ApiError::Validation)?;
    let title = title.as_ref().map(TaskTitle::as_str);
    let set_description = description.is_some();
    let description = description.flatten();
    let description = description.as_ref().map(TaskDescription::as_str);
    let set_due = due_at.is_some();
    let due_at = due_at.flatten();
    let rows = state
        .db
        .scoped(
            owner,
            UPDATE,
            &[
                (&owner, Type::UUID),
                (&id, Type::UUID),
                (&title, Type::TEXT),
                (&set_description, Type::BOOL),
                (&description, Type::TEXT),
                (&completed, Type::BOOL),
                (&set_due, Type::BOOL),
                (&due_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    json(StatusCode::OK, &single(&rows)?)
}

const UPDATE: &str = "UPDATE tasks SET \
    title = COALESCE($3, title), \
    description = CASE WHEN $4 THEN $5 ELSE description END, \
    completed = COALESCE($6, completed), \
    due_at = CASE WHEN $7 THEN $8 ELSE due_at END, \
    updated_at = clock_timestamp() \
    WHERE owner_id = $1 AND id = $2 \
    RETURNING id, title, description, completed, due_at, created_at, updated_at";

pub async fn delete(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<Response<Body>, ApiError> {
    let (owner, id) = task_scope(state, &req, ctx, user_id, task)?;
    let rows = state
        .db
        .scoped(
            owner,
            "DELETE FROM tasks WHERE owner_id = $1 AND id = $2 RETURNING id",
            &[(&owner, Type::UUID), (&id, Type::UUID)],
        )
        .await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::representable;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            id: Uuid::nil(),
        };
        let d = Cursor::decode(&c.encode()).ok();
        assert_eq!(d.map(|d| (d.created_at, d.id)), Some((c.created_at, c.id)));
        assert!(Cursor::decode("not-a-cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("12.nope")).is_err());
    }

    mod properties {
        use super::super::*;
        use super::{URL_SAFE_NO_PAD, representable};
        use crate::http::parse_json;
        use base64::Engine;
        use proptest::prelude::*;

        fn json_text() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
                "(title|description|due_at|completed)".prop_map(serde_json::Value::from),
                "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})"
                    .prop_map(serde_json::Value::from),
            ];
            let value = leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(
                        "(title|description|due_at|completed|owner_id|[a-z]{1,6})",
                        inner,
                        0..5
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            });
            prop_oneof![value.prop_map(|v| v.to_string()), any::<String>(),]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_create_body_is_a_valid_task_or_a_typed_error(body in json_text()) {
                match parse_json::<CreateBody>(body.as_bytes()) {
                    Ok(b) => match NewTask::parse(b) {
                        Ok(t) => {
                            prop_assert!(t.due_at.is_none_or(representable));
                        }
                        Err(errors) => prop_assert!(!errors.is_empty()),
                    },
                    Err(ApiError::Validation(errors)) => prop_assert!(!errors.is_empty()),
                    Err(ApiError::Malformed(_)) => {}
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn any_patch_body_is_a_valid_change_or_a_typed_error(body in json_text()) {
                match parse_json::<PatchBody>(body.as_bytes()) {
                    Ok(b) => match TaskChanges::parse(b) {
                        Ok(c) => {
                            prop_assert!(c.due_at.flatten().is_none_or(representable));
                        }
                        Err(errors) => prop_assert!(!errors.is_empty()),
                    },
                    Err(ApiError::Validation(errors)) => prop_assert!(!errors.is_empty()),
                    Err(ApiError::Malformed(_)) => {}
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn any_cursor_text_decodes_to_a_representable_position_or_a_field_error(
                raw in prop_oneof![
                    any::<String>(),
                    (any::<i128>(), any::<u128>()).prop_map(|(m, id)| URL_SAFE_NO_PAD.encode(format!("{m}.{}", Uuid::from_u128(id)))),
                    "[0-9-]{1,40}\\.[0-9a-f-]{1,40}".prop_map(|t| URL_SAFE_NO_PAD.encode(t)),
                ]
            ) {
                match Cursor::decode(&raw) {
                    Ok(c) => prop_assert!(representable(c.created_at)),
                    Err(e) => prop_assert_eq!(e.field, "cursor"),
                }
            }

            #[test]
            fn cursors_round_trip_for_every_storable_instant(
                micros in -62_167_219_200_000_000i64..253_402_300_800_000_000i64,
                id in any::<u128>(),
            ) {
                let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let c = Cursor { created_at, id: Uuid::from_u128(id) };
                let back = Cursor::decode(&c.encode());
                prop_assert!(back.is_ok());
                let back = back.unwrap_or(c);
                prop_assert_eq!(back.created_at, created_at);
                prop_assert_eq!(back.id, Uuid::from_u128(id));
            }

            #[test]
            fn any_list_query_is_parsed_or_a_field_error(q in prop_oneof![any::<String>(), "(completed|limit|cursor|x)=[a-z0-9%]{0,8}(&(completed|limit|cursor)=[a-z0-9%]{0,8}){0,3}"]) {
                match crate::http::parse_query::<ListQuery>(Some(&q)) {
                    Ok(_) | Err(ApiError::Validation(_)) => {}
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }
}
