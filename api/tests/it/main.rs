//! Integration tests of `cache-api` against the real Redis and PostgreSQL.
//! Each test uses its own tenant (and its own users and sessions), so tests
//! run in parallel and never flush anything.

#![allow(clippy::unwrap_used)]

mod auth;
mod cache;
mod cli;
mod cluster;
mod encryption;
mod events;
mod expiry;
mod faults;
mod helpers;
mod identities;
mod jobs;
mod limits;
mod management;
mod namespaces;
mod near_cache;
mod observability;
mod openapi;
mod permissions;
mod persistence;
mod platform_tokens;
mod preload_url;
mod protection;
mod public;
mod quota;
mod schedules;
mod secrets;
mod server;
mod sessions;
mod tenant_safety;
mod tls;
mod validation;
