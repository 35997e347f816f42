//! Request and response plumbing at the HTTP boundary: JSON bodies (content type, size limit,
//! field-level errors), bearer tokens, query strings, JSON responses.

use bytes::Bytes;
use gatehouse_common::problem::FieldError;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub type Body = Full<Bytes>;

pub const JSON: &str = "application/json";

/// Reads a JSON body: 415 unless the content type is JSON, 413 over `limit` (by
/// `Content-Length` first, then while reading), 400 for broken JSON, 422 with the field for
/// wrong, missing or unknown fields.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    if !is_json(headers.get(CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        Err(e) => return Err(ApiError::Malformed(format!("could not read the body: {e}"))),
    };
    parse_json(&bytes)
}

/// Parses a JSON object into `T`, turning serde's errors into client-facing messages.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de)
        .map(|Object(v)| v)
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let msg = strip_position(&inner.to_string());
                    let field = if let Some(name) =
                        backticked(&msg).filter(|_| msg.starts_with("unknown field"))
                    {
                        join_path(&path, &name)
                    } else if let Some(name) =
                        backticked(&msg).filter(|_| msg.starts_with("missing field"))
                    {
                        join_path(&path, &name)
                    } else if path == "." || path.is_empty() {
                        "body".to_string()
                    } else {
                        path
                    };
                    let message = if msg.starts_with("unknown field") {
                        "is not a known field".to_string()
                    } else if msg.starts_with("missing field") {
                        "is required".to_string()
                    } else {
                        msg
                    };
                    ApiError::Validation(vec![FieldError::new(field, message)])
                }
                _ => ApiError::Malformed(format!("the body is not valid JSON ({})", inner)),
            }
        })
}

/// Every request body is a JSON object. serde's derived structs also accept a JSON array of
/// the fields in order (`["a@b.c", "pw"]` as credentials, `[]` as a body whose fields are all
/// optional); this takes maps only.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

fn join_path(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_string()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        // serde_path_to_error already descended into the unknown field.
        path.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn is_json(v: Option<&HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The bearer token of the request (RFC 6750 §2.1), if well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Parses a query string into `T` (unknown parameters rejected by `T`).
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|e| {
        let msg = e.to_string();
        let field = backticked(&msg).unwrap_or_else(|| "query".to_string());
        ApiError::Validation(vec![FieldError::new(field, strip_position(&msg))])
    })
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(resp)
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        done: Option<bool>,
    }

    fn field_of(r: Result<Body, ApiError>) -> Option<(String, String)> {
        match r {
            Err(ApiError::Validation(v)) => v.first().map(|f| (f.field.clone(), f.message.clone())),
            _ => None,
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(
            field_of(parse_json(br#"{"title":"x","owner":1}"#)),
            Some(("owner".into(), "is not a known field".into()))
        );
        assert_eq!(
            field_of(parse_json(br#"{}"#)),
            Some(("title".into(), "is required".into()))
        );
        let (f, m) = field_of(parse_json(br#"{"title":5}"#)).unwrap_or_default();
        assert_eq!(f, "title");
        assert!(
            m.starts_with("invalid type: integer `5`, expected a string"),
            "{m}"
        );
        assert!(matches!(
            parse_json::<Body>(b"{nope"),
            Err(ApiError::Malformed(_))
        ));
        // The fields as an array: serde's derive would take it, a body never is one.
        assert_eq!(
            field_of(parse_json(br#"["x", true]"#)),
            Some((
                "body".into(),
                "invalid type: sequence, expected a JSON object".into()
            ))
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json(Some(&HeaderValue::from_static(
            "application/json; charset=utf-8"
        ))));
        assert!(is_json(Some(&HeaderValue::from_static(
            "application/merge-patch+json"
        ))));
        assert!(!is_json(Some(&HeaderValue::from_static("text/plain"))));
        assert!(!is_json(None));
    }
}
