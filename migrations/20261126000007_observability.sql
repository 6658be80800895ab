-- Observability: per-instance contributions to the statistics rollups (so a
-- re-delivered rollup never counts twice), one operation log row per item of
-- a batch request, and delivery state of audit events (admin_actions doubles
-- as the audit outbox: an event stays pending until the audit service took it).

create table stats_contributions (
    tenant_id       varchar(64)  not null,
    period_start    timestamptz  not null,
    period_minutes  integer      not null check (period_minutes > 0),
    instance_id     varchar(128) not null,
    figures         jsonb        not null,
    created_at      timestamptz  not null default now(),
    primary key (tenant_id, period_start, period_minutes, instance_id)
);

create index stats_contributions_period_idx on stats_contributions (period_start);

alter table cache_operation_logs add column item integer not null default 0;
alter table cache_operation_logs drop constraint cache_operation_logs_request_key;
alter table cache_operation_logs
    add constraint cache_operation_logs_request_key unique (request_id, operation, item, occurred_at);

alter table admin_actions
    add column audit_delivered_at timestamptz,
    add column audit_attempts     integer     not null default 0,
    add column audit_next_at      timestamptz not null default now(),
    add column audit_error        text;

-- Actions recorded before the outbox existed are history, not pending events.
update admin_actions set audit_delivered_at = created_at;

create index admin_actions_audit_pending_idx on admin_actions (id)
    where audit_delivered_at is null;
