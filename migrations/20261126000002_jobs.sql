-- The durable record of every job (API.md §6). The queue in Redis delivers
-- jobs; this table is what the HTTP API answers from and what survives
-- vacuuming of the queue.

create table jobs (
    id               varchar(26)  primary key,          -- ULID, also the queue's task id
    job_type         varchar(32)  not null,
    tenant_id        varchar(64)  not null,
    params           jsonb        not null default '{}'::jsonb,
    status           varchar(16)  not null default 'queued'
                     check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress_done    bigint       not null default 0,
    progress_total   bigint,
    attempts         integer      not null default 0,
    crashes          integer      not null default 0,
    result           jsonb,
    error            text,
    cancel_requested boolean      not null default false,
    created_by       varchar(255),
    created_at       timestamptz  not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz  not null default now()
);

create index jobs_tenant_created_idx on jobs (tenant_id, created_at desc);

create index jobs_unfinished_idx on jobs (status, updated_at) where status in ('queued', 'running');

-- Idempotency-Key → job, per tenant, for 24 hours (a row older than that is
-- replaced by the next request with the same key).
create table job_idempotency_keys (
    tenant_id        varchar(64)  not null,
    idempotency_key  varchar(255) not null,
    job_id           varchar(26)  not null references jobs (id) on delete cascade,
    created_at       timestamptz  not null default now(),
    constraint job_idempotency_keys_pkey primary key (tenant_id, idempotency_key)
);
