-- Per-tenant overrides of the platform's default limits (API.md §9). A null
-- column follows the default; 0 means unlimited. Every api instance reloads
-- this table every few seconds.

create table tenant_limits (
    tenant_id           varchar(64) primary key,
    max_keys            bigint check (max_keys >= 0),
    max_bytes           bigint check (max_bytes >= 0),
    requests_per_second bigint check (requests_per_second >= 0),
    burst               bigint check (burst >= 0),
    max_active_jobs     bigint check (max_active_jobs >= 0),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

-- What an idempotency key was first used for (job type and parameters, as a
-- SHA-256 digest), so reusing it for another request is a conflict.
alter table job_idempotency_keys add column request_digest bytea;
