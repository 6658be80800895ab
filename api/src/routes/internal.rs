//! The internal cache plane (API.md §4) used by the platform's services.

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::extract::{InternalCaller, JsonBody, PathParam};
use crate::state::AppState;
use crate::views::{Deleted, EntryView, ExistsView, KeyTtl, Updated, ValueView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/cache/get/{key}", get(get_value))
        .route("/internal/cache/set", post(set_value))
        .route("/internal/cache/delete/{key}", delete(delete_value))
        .route("/internal/cache/mget", post(mget))
        .route("/internal/cache/mset", post(mset))
        .route("/internal/cache/exists", post(exists))
        .route("/internal/cache/expire", post(expire))
}

async fn get_value(
    State(state): State<AppState>,
    caller: InternalCaller,
    PathParam(key): PathParam,
) -> Result<Json<EntryView>, ApiError> {
    let entry = state
        .cache
        .get(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("get"))?;
    Ok(Json(
        EntryView::new(key, &entry).map_err(ApiError::op("get"))?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    key: String,
    value: Box<RawValue>,
    ttl: Option<Expiry>,
}

async fn set_value(
    State(state): State<AppState>,
    caller: InternalCaller,
    JsonBody(body): JsonBody<SetBody>,
) -> Result<Json<KeyTtl>, ApiError> {
    let value = Value::from_raw_json(&body.value);
    let ttl = state
        .cache
        .set(&caller.tenant, &body.key, &value, body.ttl)
        .await
        .map_err(ApiError::op("set"))?;
    Ok(Json(KeyTtl { key: body.key, ttl }))
}

async fn delete_value(
    State(state): State<AppState>,
    caller: InternalCaller,
    PathParam(key): PathParam,
) -> Result<Json<Deleted>, ApiError> {
    let deleted = state
        .cache
        .delete(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("delete"))?;
    Ok(Json(Deleted { key, deleted }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    keys: Vec<String>,
}

#[derive(Debug, Serialize)]
struct MgetItem {
    key: String,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<ValueView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<i64>,
}

#[derive(Debug, Serialize)]
struct MgetView {
    items: Vec<MgetItem>,
}

async fn mget(
    State(state): State<AppState>,
    caller: InternalCaller,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<MgetView>, ApiError> {
    let entries = state
        .cache
        .mget(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("mget"))?;
    let items = body
        .keys
        .into_iter()
        .zip(entries)
        .map(|(key, entry)| match entry {
            None => Ok(MgetItem {
                key,
                found: false,
                value: None,
                encoding: None,
                ttl: None,
            }),
            Some(entry) => {
                let (value, encoding) = ValueView::new(&entry.value)?;
                Ok(MgetItem {
                    key,
                    found: true,
                    value: Some(value),
                    encoding,
                    ttl: Some(entry.ttl),
                })
            }
        })
        .collect::<Result<_, cache_shared::Error>>()
        .map_err(ApiError::op("mget"))?;
    Ok(Json(MgetView { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MsetBody {
    items: Vec<MsetItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MsetItem {
    key: String,
    value: Box<RawValue>,
    ttl: Option<Expiry>,
}

#[derive(Debug, Serialize)]
struct Stored {
    stored: usize,
}

async fn mset(
    State(state): State<AppState>,
    caller: InternalCaller,
    JsonBody(body): JsonBody<MsetBody>,
) -> Result<Json<Stored>, ApiError> {
    let items: Vec<SetItem> = body
        .items
        .into_iter()
        .map(|item| SetItem {
            value: Value::from_raw_json(&item.value),
            key: item.key,
            ttl: item.ttl,
        })
        .collect();
    let stored = state
        .cache
        .mset(&caller.tenant, &items)
        .await
        .map_err(ApiError::op("mset"))?;
    Ok(Json(Stored { stored }))
}

async fn exists(
    State(state): State<AppState>,
    caller: InternalCaller,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<ExistsView>, ApiError> {
    let found = state
        .cache
        .exists(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("exists"))?;
    Ok(Json(ExistsView::new(body.keys, found)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    key: String,
    ttl: Expiry,
}

async fn expire(
    State(state): State<AppState>,
    caller: InternalCaller,
    JsonBody(body): JsonBody<ExpireBody>,
) -> Result<Json<Updated>, ApiError> {
    let updated = state
        .cache
        .expire(&caller.tenant, &body.key, body.ttl)
        .await
        .map_err(ApiError::op("expire"))?;
    Ok(Json(Updated {
        key: body.key,
        updated,
    }))
}
