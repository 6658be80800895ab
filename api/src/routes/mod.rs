//! Routers by area; each exposes `router()` and keeps its handlers thin:
//! extract, call one operation, shape the answer.

pub mod admin_keys;
pub mod events;
pub mod health;
pub mod internal;
pub mod jobs;
pub mod management;
pub mod monitoring;
pub mod namespaces;
pub mod permissions;
pub mod public;
pub mod schedules;
pub mod sessions;
pub mod tenant_limits;
