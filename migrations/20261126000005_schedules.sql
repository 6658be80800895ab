-- Cron schedules of jobs (API.md §6), fired by the workers. A worker claims
-- a due tick by moving next_run_at forward with a compare-and-set, so with
-- any number of workers each tick fires once.

create table schedules (
    id           varchar(26)  primary key,
    tenant_id    varchar(64)  not null,
    name         varchar(255),
    cron         varchar(255) not null,
    timezone     varchar(64)  not null default 'UTC',
    job_type     varchar(32)  not null,
    params       jsonb        not null default '{}'::jsonb,
    enabled      boolean      not null default true,
    next_run_at  timestamptz,
    last_run_at  timestamptz,
    last_job_id  varchar(26),
    created_by   varchar(255),
    created_at   timestamptz  not null default now(),
    updated_at   timestamptz  not null default now()
);

create index schedules_tenant_idx on schedules (tenant_id, created_at desc);

create index schedules_due_idx on schedules (next_run_at) where enabled;
