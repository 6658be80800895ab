//! Response bodies shared by the internal and the public plane.

use base64::Engine;
use cache_shared::Error;
use cache_shared::cache::Entry;
use cache_shared::codec::Value;
use serde::Serialize;
use serde_json::value::RawValue;

/// A value in a JSON answer: itself when it is JSON, base64 text when it was
/// stored as raw bytes (then `encoding: "base64"` accompanies it).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ValueView {
    Json(Box<RawValue>),
    Base64(String),
}

impl ValueView {
    /// # Errors
    ///
    /// [`Error::Internal`] when stored JSON no longer parses.
    pub fn new(value: Value) -> Result<(Self, Option<&'static str>), Error> {
        Ok(match value {
            json @ Value::Json(_) => (Self::Json(json.into_raw_json()?), None),
            Value::Bytes(bytes) => (
                Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
                Some("base64"),
            ),
        })
    }
}

/// `{"key","value","ttl"}` (+ `"encoding"` for raw bytes).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    pub key: String,
    /// Any JSON value; base64 text of raw bytes when `encoding` is `base64`.
    #[schema(value_type = Object)]
    pub value: ValueView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    pub ttl: i64,
}

impl EntryView {
    /// # Errors
    ///
    /// As [`ValueView::new`].
    pub fn new(key: String, entry: Entry) -> Result<Self, Error> {
        let (value, encoding) = ValueView::new(entry.value)?;
        Ok(Self {
            key,
            value,
            encoding,
            ttl: entry.ttl,
        })
    }
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
