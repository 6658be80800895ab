-- API keys of the public plane (API.md §1). Only a SHA-256 of the key is
-- kept; the key itself is shown once, at creation.

create table api_keys (
    id             varchar(26)  primary key,
    key_hash       bytea        not null,
    tenant_id      varchar(64)  not null,
    role           varchar(16)  not null
                   check (role in ('reader', 'writer', 'admin', 'operator')),
    name           varchar(255),
    created_at     timestamptz  not null default now(),
    last_used_at   timestamptz,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    constraint api_keys_key_hash_key unique (key_hash)
);

create index api_keys_tenant_idx on api_keys (tenant_id, created_at desc);
