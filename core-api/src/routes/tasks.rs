//! `/api/users/{user_id}/tasks…`: owner-scoped task CRUD with keyset pagination.
//!
//! This module turns requests into parsed domain values and storage calls (`db::tasks`), where
//! both walls live: `owner_id = $1` from the verified token in every statement, and the
//! row-level-security identity set to the same user.

use gatehouse_common::problem::FieldError;
use http::header::LOCATION;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::db::tasks::{self as store, ListFilter, Task};
use crate::domain::{
    Cursor, Fields, NewTask, TaskChanges, TaskDescription, TaskTitle, parse_rfc3339,
};
use crate::error::ApiError;
use crate::http::{Body, empty, json, parse_query, read_json};
use crate::state::{AppState, Ctx};

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

#[derive(Serialize)]
struct Page {
    items: Vec<Task>,
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

/// A create body as a valid new task: every field checked, every problem reported.
fn parse_create(body: CreateBody) -> Result<NewTask, Vec<FieldError>> {
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
        (Some(title), Some(description), Some(due_at)) => Ok(NewTask {
            title,
            description,
            due_at,
        }),
        _ => Err(vec![FieldError::new("body", "is invalid")]),
    }
}

/// A PATCH body as valid changes.
fn parse_patch(body: PatchBody) -> Result<TaskChanges, Vec<FieldError>> {
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
        (Some(title), Some(completed), Some(description), Some(due_at)) => Ok(TaskChanges {
            title,
            completed,
            description,
            due_at,
        }),
        _ => Err(vec![FieldError::new("body", "is invalid")]),
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
    let filter = ListFilter {
        completed,
        after: cursor,
        limit: limit + 1,
    };
    let mut items = store::list(&state.db, owner, &filter).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|t| t.cursor().encode())
    } else {
        None
    };
    json(StatusCode::OK, &Page { items, next_cursor })
}

pub async fn create(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
) -> Result<Response<Body>, ApiError> {
    let owner = owner(state, &req, ctx, user_id)?;
    let (parts, body) = req.into_parts();
    let body: CreateBody = read_json(&parts.headers, body, state.body_limit()).await?;
    let new = parse_create(body).map_err(ApiError::Validation)?;
    let task = store::create(&state.db, owner, &new).await?;
    let mut resp = json(StatusCode::CREATED, &task)?;
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/users/{owner}/tasks/{}", task.id)) {
        resp.headers_mut().insert(LOCATION, loc);
    }
    Ok(resp)
}

pub async fn get(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<Response<Body>, ApiError> {
    let (owner, id) = task_scope(state, &req, ctx, user_id, task)?;
    let task = store::get(&state.db, owner, id).await?;
    json(StatusCode::OK, &task.ok_or(ApiError::NotFound)?)
}

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
    let changes = parse_patch(body).map_err(ApiError::Validation)?;
    let task = store::update(&state.db, owner, id, &changes).await?;
    json(StatusCode::OK, &task.ok_or(ApiError::NotFound)?)
}

pub async fn delete(
    state: &AppState,
    req: Request<Incoming>,
    ctx: &mut Ctx,
    user_id: &str,
    task: &str,
) -> Result<Response<Body>, ApiError> {
    let (owner, id) = task_scope(state, &req, ctx, user_id, task)?;
    if !store::delete(&state.db, owner, id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    mod properties {
        use super::super::*;
        use crate::domain::representable;
        use crate::http::parse_json;
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
                    Ok(b) => match parse_create(b) {
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
                    Ok(b) => match parse_patch(b) {
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
            fn any_list_query_is_parsed_or_a_field_error(q in prop_oneof![any::<String>(), "(completed|limit|cursor|x)=[a-z0-9%]{0,8}(&(completed|limit|cursor)=[a-z0-9%]{0,8}){0,3}"]) {
                match crate::http::parse_query::<ListQuery>(Some(&q)) {
                    Ok(_) | Err(ApiError::Validation(_)) => {}
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }
}
