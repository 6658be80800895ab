-- Memory analysis reports (one per analysis job) and the record of
-- platform-wide admin actions (who changed the eviction policy, the pool...).

create table memory_reports (
    id          varchar(26)  primary key,          -- the analysis job's id
    tenant_id   varchar(64)  not null,
    mode        varchar(8)   not null check (mode in ('full', 'sampled')),
    report      jsonb        not null,
    created_at  timestamptz  not null default now()
);

create index memory_reports_tenant_created_idx on memory_reports (tenant_id, created_at desc);

create table admin_actions (
    id          bigint generated always as identity primary key,
    actor       varchar(255) not null,                 -- API key id or 'internal'
    tenant_id   varchar(64)  not null,
    action      varchar(64)  not null,
    details     jsonb        not null default '{}'::jsonb,
    created_at  timestamptz  not null default now()
);

create index admin_actions_created_idx on admin_actions (created_at desc);
