-- Backups of a tenant's keys: stored bytes exactly as in Redis (format tag
-- included) and when each key expires. One backup per backup job.

create table backups (
    id          varchar(26)  primary key,          -- the backup job's id
    tenant_id   varchar(64)  not null,
    key_count   bigint       not null default 0,
    bytes       bigint       not null default 0,
    complete    boolean      not null default false,
    created_at  timestamptz  not null default now()
);

create index backups_tenant_created_idx on backups (tenant_id, created_at desc);

create table backup_entries (
    backup_id   varchar(26)  not null references backups (id) on delete cascade,
    cache_key   varchar(512) not null,
    value       bytea        not null,
    expires_at  timestamptz,                        -- null: no expiry
    constraint backup_entries_pkey primary key (backup_id, cache_key)
);
