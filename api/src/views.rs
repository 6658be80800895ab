//! Response bodies shared by the internal and the public plane.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use cache_shared::Error;
use cache_shared::cache::Entry;
use hyper::body::{Frame, SizeHint};
use serde::Serialize;
use serde_json::value::RawValue;

/// The documented shape of a value in an answer; [`entry_answer`] and
/// [`mget_answer`] write it (the tests hold the two equal).
#[derive(Debug, Serialize)]
#[serde(untagged)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum ValueView {
    Json(Box<RawValue>),
    Base64(String),
}

/// `{"key","value","ttl"}` (+ `"encoding"` for raw bytes): the schema of
/// what [`entry_answer`] writes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct EntryView {
    pub key: String,
    /// Any JSON value; base64 text of raw bytes when `encoding` is `base64`.
    #[schema(value_type = serde_json::Value)]
    pub value: ValueView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    pub ttl: i64,
    /// Present (true) when the caller should recompute the value and set it
    /// before it expires (refresh-ahead; also `X-Cache-Refresh: 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<bool>,
}

/// One item of an mget answer: the schema of what [`mget_answer`] writes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct MgetItem {
    pub key: String,
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<ValueView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
}

/// `{"items":[...]}` in request order: the schema of [`mget_answer`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct MgetView {
    pub items: Vec<MgetItem>,
}

/// The answer to a single read, written straight from the stored value: its
/// JSON is copied in as it is, never parsed and serialized again.
///
/// # Errors
///
/// [`Error::Internal`] when a compressed value does not decompress.
pub fn entry_answer(key: &str, entry: &Entry) -> Result<Response, Error> {
    let mut response = match entry.value.stored_payload() {
        Some(payload) if entry.value.is_json() && payload.len() >= SPLICE_BYTES => {
            let mut head = Vec::with_capacity(key.len() + 24);
            write_head(&mut head, key, false)?;
            let mut tail = Vec::with_capacity(48);
            write_tail(&mut tail, entry)?;
            json_response(Body::new(Spliced {
                parts: [Bytes::from(head), payload, Bytes::from(tail)],
            }))
        }
        _ => {
            let mut out = Vec::with_capacity(entry_capacity(key, entry) + 2);
            write_entry(&mut out, key, entry, false)?;
            json_response(Body::from(out))
        }
    };
    mark_refresh(&mut response, entry.refresh);
    Ok(response)
}

/// From this size on, a value goes to the socket in the buffer Redis's
/// answer was read into (one vectored write of the answer's head, the value
/// and its tail) instead of being copied into the answer; below it, one
/// copy costs less than the extra buffers.
const SPLICE_BYTES: usize = 2048;

/// A body of a few buffers written as they are, with an exact length (so
/// the answer keeps its `Content-Length`); a buffer sent is left empty.
struct Spliced {
    parts: [Bytes; 3],
}

impl hyper::body::Body for Spliced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.parts.iter_mut().find(|part| !part.is_empty());
        Poll::Ready(next.map(|part| Ok(Frame::data(std::mem::take(part)))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self.parts.iter().map(Bytes::len).sum();
        SizeHint::with_exact(len as u64)
    }
}

/// `X-Cache-Refresh: 1` on the answer to a read asked to refresh its value.
pub fn mark_refresh(response: &mut Response, refresh: bool) {
    if refresh {
        response
            .headers_mut()
            .insert(CACHE_REFRESH, HeaderValue::from_static("1"));
    }
}

/// Set on reads whose caller should recompute the value before it expires.
pub const CACHE_REFRESH: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-cache-refresh");

/// The answer to an mget, values spliced in as [`entry_answer`] does.
///
/// # Errors
///
/// As [`entry_answer`].
pub fn mget_answer(keys: &[String], entries: &[Option<Entry>]) -> Result<Response, Error> {
    let capacity: usize = keys
        .iter()
        .zip(entries)
        .map(|(key, entry)| {
            entry
                .as_ref()
                .map_or(key.len() + 32, |e| entry_capacity(key, e) + 16)
        })
        .sum();
    let mut out = Vec::with_capacity(capacity + 16);
    out.extend_from_slice(b"{\"items\":[");
    for (i, (key, entry)) in keys.iter().zip(entries).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match entry {
            Some(entry) => write_entry(&mut out, key, entry, true)?,
            None => {
                out.extend_from_slice(b"{\"key\":");
                write_str(&mut out, key)?;
                out.extend_from_slice(b",\"found\":false}");
            }
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(Body::from(out)))
}

/// Room for an entry's answer: the escaped key may grow, base64 by a third.
fn entry_capacity(key: &str, entry: &Entry) -> usize {
    let value = entry.value.payload_len();
    let value = if entry.value.is_json() {
        value
    } else {
        value.div_ceil(3) * 4 + 24
    };
    key.len() + value + 48
}

/// `{"key":…,"value":` (with `"found":true` in an mget item).
fn write_head(out: &mut Vec<u8>, key: &str, found: bool) -> Result<(), Error> {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key)?;
    if found {
        out.extend_from_slice(b",\"found\":true");
    }
    out.extend_from_slice(b",\"value\":");
    Ok(())
}

/// What follows an entry's value: its TTL, the refresh flag, the brace.
fn write_tail(out: &mut Vec<u8>, entry: &Entry) -> Result<(), Error> {
    write!(out, ",\"ttl\":{}", entry.ttl).map_err(|e| Error::Internal(Box::new(e)))?;
    if entry.refresh {
        out.extend_from_slice(b",\"refresh\":true");
    }
    out.push(b'}');
    Ok(())
}

fn write_entry(out: &mut Vec<u8>, key: &str, entry: &Entry, found: bool) -> Result<(), Error> {
    write_head(out, key, found)?;
    if entry.value.is_json() {
        entry.value.append_payload(out)?;
    } else {
        let raw = entry.value.clone().into_payload()?;
        out.push(b'"');
        let start = out.len();
        out.resize(start + base64::encoded_len(raw.len(), true).unwrap_or(0), 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&raw, &mut out[start..])
            .map_err(|e| Error::Internal(Box::new(e)))?;
        out.truncate(start + written);
        out.extend_from_slice(b"\",\"encoding\":\"base64\"");
    }
    write_tail(out, entry)
}

/// A JSON string, escaped as serde_json escapes it.
fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), Error> {
    serde_json::to_writer(out, text).map_err(|e| Error::Internal(Box::new(e)))
}

fn json_response(body: Body) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyTtl {
    pub key: String,
    pub ttl: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub key: String,
    pub deleted: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Updated {
    pub key: String,
    pub updated: bool,
}

/// `{"count","exists":{"k":bool}}`; `count` is the number of distinct keys found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExistsView {
    pub count: usize,
    #[schema(value_type = std::collections::HashMap<String, bool>)]
    pub exists: std::collections::BTreeMap<String, bool>,
}

impl ExistsView {
    pub fn new(keys: Vec<String>, found: Vec<bool>) -> Self {
        let exists: std::collections::BTreeMap<String, bool> =
            keys.into_iter().zip(found).collect();
        Self {
            count: exists.values().filter(|&&e| e).count(),
            exists,
        }
    }
}

/// `202` answer of every job-starting endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: String,
    pub status_url: String,
}

impl JobAccepted {
    /// A repeated idempotent request reports the job's current status.
    pub fn new(record: &cache_shared::db::jobs::JobRecord, status_url: String) -> Self {
        Self {
            job_id: record.id.clone(),
            job_type: record.job_type.clone(),
            status: record.status.clone(),
            status_url,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub done: i64,
    pub total: Option<i64>,
}

/// A job as `GET /api/v1/jobs/{id}` shows it (API.md §6).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub tenant_id: String,
    pub status: String,
    pub progress: Progress,
    pub attempts: i32,
    /// What the job was asked to do; inline preload items are counted
    /// (`itemCount`), not repeated.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Times in answers: RFC 3339, UTC, milliseconds, `Z` (as API.md §3 asks).
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<cache_shared::db::jobs::JobRecord> for JobView {
    fn from(r: cache_shared::db::jobs::JobRecord) -> Self {
        Self {
            job_id: r.id,
            job_type: r.job_type,
            tenant_id: r.tenant_id,
            status: r.status,
            progress: Progress {
                done: r.progress_done,
                total: r.progress_total,
            },
            attempts: r.attempts,
            params: r.params,
            result: r.result,
            error: r.error,
            created_at: timestamp(r.created_at),
            started_at: r.started_at.map(timestamp),
            finished_at: r.finished_at.map(timestamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_shared::codec::{Codec, Stored, Value};

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn entry(value: &Value, codec: Codec, ttl: i64, refresh: bool) -> Entry {
        Entry {
            value: Stored::new(codec.encode(value)).unwrap(),
            ttl,
            refresh,
        }
    }

    /// What the serde views would have written, the reference.
    fn view(key: &str, value: &Value, ttl: i64, refresh: bool) -> EntryView {
        let (value, encoding) = match value {
            Value::Json(text) => (
                ValueView::Json(RawValue::from_string(text.clone()).unwrap()),
                None,
            ),
            Value::Bytes(bytes) => (
                ValueView::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
                Some("base64"),
            ),
        };
        EntryView {
            key: key.into(),
            value,
            encoding,
            ttl,
            refresh: refresh.then_some(true),
        }
    }

    fn values() -> Vec<Value> {
        vec![
            Value::Json(r#"{"a":[1,2.50,"x \" y"],"b":null}"#.into()),
            Value::Json(format!("\"{}\"", "ab".repeat(3000))),
            Value::Bytes(Bytes::from_static(b"\x00\x01\xfe\xff raw")),
            Value::Bytes(Bytes::from(vec![7u8; 5000])),
        ]
    }

    #[tokio::test]
    async fn spliced_answers_equal_what_the_schema_types_serialize() {
        let key = "user:\"1\"\\é\u{1}";
        for codec in [Codec::new(usize::MAX), Codec::new(16)] {
            for (i, value) in values().iter().enumerate() {
                let ttl = i as i64 * 100 - 1;
                let refresh = i % 2 == 1;
                let answer = entry_answer(key, &entry(value, codec, ttl, refresh)).unwrap();
                assert_eq!(answer.headers().contains_key(CACHE_REFRESH), refresh);
                // An exact length, so the answer keeps its Content-Length.
                let announced = hyper::body::Body::size_hint(answer.body()).exact();
                let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(announced, Some(bytes.len() as u64), "value {i}");
                let spliced: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let reference = serde_json::to_value(view(key, value, ttl, refresh)).unwrap();
                assert_eq!(spliced, reference, "value {i}");
            }
        }
    }

    #[tokio::test]
    async fn spliced_mget_answers_equal_what_the_schema_types_serialize() {
        let codec = Codec::new(16);
        let values = values();
        let keys: Vec<String> = (0..=values.len()).map(|i| format!("k{i}")).collect();
        let mut entries: Vec<Option<Entry>> = values
            .iter()
            .map(|v| Some(entry(v, codec, 5, false)))
            .collect();
        entries.insert(1, None);
        let items: Vec<MgetItem> = keys
            .iter()
            .zip(&entries)
            .map(|(key, found)| match found {
                None => MgetItem {
                    key: key.clone(),
                    found: false,
                    value: None,
                    encoding: None,
                    ttl: None,
                },
                Some(_) => {
                    let i = keys.iter().position(|k| k == key).unwrap();
                    let v = view(key, &values[if i > 1 { i - 1 } else { i }], 5, false);
                    MgetItem {
                        key: key.clone(),
                        found: true,
                        value: Some(v.value),
                        encoding: v.encoding,
                        ttl: Some(5),
                    }
                }
            })
            .collect();
        let spliced = body_of(mget_answer(&keys, &entries).unwrap()).await;
        assert_eq!(spliced, serde_json::to_value(MgetView { items }).unwrap());
    }
}
