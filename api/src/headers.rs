//! Header names of the contract (API.md §1, §4) read by more than one layer:
//! the extractors authenticate with them, admission keys rates by them.

/// Header carrying a platform service's credential.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";
/// Header naming the tenant an internal caller acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";
