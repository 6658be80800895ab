//! Request extractors: bodies, path segments and query strings read under
//! our limits and answered with our envelope when they are malformed, never
//! a framework's text. Who is calling is `auth`'s.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{HeaderMap, header, request::Parts};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// One path parameter, percent-decoded, with decoding failures in our envelope.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::bad_request(
                "key",
                "the path segment is not valid percent-encoded UTF-8",
            )),
            Err(other) => {
                // Only reachable when a route lacks its parameter: a bug.
                Err(cache_shared::Error::internal(other.body_text()).into())
            }
        }
    }
}

/// An optional number from the query string that must lie in `range`:
/// anything else is a `400` naming `field`, with `message`.
pub fn bounded_param<T: std::str::FromStr + PartialOrd>(
    text: Option<&str>,
    field: &'static str,
    range: std::ops::RangeInclusive<T>,
    message: &'static str,
) -> Result<Option<T>, ApiError> {
    text.map(|text| {
        text.parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| ApiError::bad_request(field, message))
    })
    .transpose()
}

/// A query string deserialized into `T`, with malformed ones answered in our envelope.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(params)| Self(params))
            .map_err(|e| ApiError::bad_request("query", e.body_text()))
    }
}

/// A JSON body read under `MAX_BODY_BYTES` (chunked or not) and deserialized
/// with the path of any bad field in the error.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let bytes = read_body(req, &state.settings).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body means `T::default()` (for routes whose
/// body is optional, such as `touch`).
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let bytes = read_body(req, &state.settings).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// Refuses bodies declared as anything but JSON; a missing type is taken as JSON.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got '{essence}'"
        )))
    }
}

/// Reads a whole body, refusing more than `MAX_BODY_BYTES` whether or not a
/// `Content-Length` announced them, and a body that has not arrived whole
/// within `BODY_READ_TIMEOUT_MS` (a slow sender cannot hold a request open).
///
/// # Errors
///
/// `413` over the limit, `408` when the body is too slow, `400` when it
/// cannot be read.
pub async fn read_body(
    req: Request,
    settings: &crate::cli::HttpSettings,
) -> Result<bytes::Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    let too_large = || {
        ApiError::from(cache_shared::Error::PayloadTooLarge {
            message: format!("request body is larger than {limit} bytes"),
            limit,
        })
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(req.into_body(), limit);
    let Ok(read) = tokio::time::timeout(settings.body_read_timeout(), read).await else {
        return Err(ApiError::BodyTimeout(settings.body_read_timeout_ms));
    };
    match read {
        Ok(bytes) => Ok(bytes),
        Err(err) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(cause) = source {
                if cause.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                source = cause.source();
            }
            Err(ApiError::bad_request(
                "body",
                "the request body could not be read",
            ))
        }
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request("body", format!("body is not valid JSON: {inner}"));
        }
        let field = field_name(&path, &inner.to_string());
        ApiError::bad_request(field.clone(), format!("{field}: {inner}"))
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request("body", format!("body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The field a deserialization error is about: its path, completed with the
/// name serde puts in "missing field `x`" and "unknown field `x`" messages.
fn field_name(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix)?.split('`').next());
    match (parent, named) {
        (parent, Some(name)) if parent == name || parent.ends_with(&format!(".{name}")) => {
            parent.to_owned()
        }
        ("", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        ("", None) => "body".to_owned(),
        (parent, None) => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_they_are_about() {
        assert_eq!(field_name(".", "missing field `key` at line 1"), "key");
        assert_eq!(
            field_name("items[2]", "unknown field `tll`, expected"),
            "items[2].tll"
        );
        assert_eq!(field_name("ttl", "invalid type: string"), "ttl");
        assert_eq!(field_name("tll", "unknown field `tll`, expected"), "tll");
        assert_eq!(field_name(".", "invalid type: sequence"), "body");
    }
}
