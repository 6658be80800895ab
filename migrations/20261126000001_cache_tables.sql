-- The four tables of the service design: namespace configuration, rolled-up
-- statistics, hot keys and the operation log. Tenant ids are varchar(64)
-- (API.md §2); '_platform' is the platform namespace.

create table cache_configs (
    id              bigint generated always as identity primary key,
    tenant_id       varchar(64)  not null,
    namespace       varchar(255) not null,
    default_ttl_seconds integer  check (default_ttl_seconds between 0 and 31536000),
    max_value_bytes bigint       check (max_value_bytes > 0),
    compression_min_bytes integer check (compression_min_bytes >= 0),
    eviction_policy varchar(32),
    preload_enabled boolean      not null default false,
    settings        jsonb        not null default '{}'::jsonb,
    created_at      timestamptz  not null default now(),
    updated_at      timestamptz  not null default now(),
    constraint cache_configs_tenant_namespace_key unique (tenant_id, namespace)
);

create table cache_statistics (
    id              bigint generated always as identity primary key,
    tenant_id       varchar(64)  not null,
    namespace       varchar(255) not null default '',
    period_start    timestamptz  not null,
    period_minutes  integer      not null check (period_minutes > 0),
    total_operations bigint      not null default 0,
    hits            bigint       not null default 0,
    misses          bigint       not null default 0,
    errors          bigint       not null default 0,
    hit_rate        double precision,
    avg_latency_ms  double precision,
    p95_latency_ms  double precision,
    p99_latency_ms  double precision,
    memory_bytes    bigint,
    key_count       bigint,
    created_at      timestamptz  not null default now(),
    updated_at      timestamptz  not null default now(),
    constraint cache_statistics_period_key unique (tenant_id, namespace, period_start, period_minutes)
);

create index cache_statistics_period_idx on cache_statistics (period_start);

create table cache_hotkeys (
    id              bigint generated always as identity primary key,
    tenant_id       varchar(64)  not null,
    cache_key       varchar(512) not null,
    window_start    timestamptz  not null,
    window_minutes  integer      not null check (window_minutes > 0),
    access_count    bigint       not null default 0,
    hotness_score   double precision not null default 0,
    trend           varchar(8)   not null default 'stable'
                    check (trend in ('rising', 'falling', 'stable')),
    should_preload  boolean      not null default false,
    created_at      timestamptz  not null default now(),
    updated_at      timestamptz  not null default now(),
    constraint cache_hotkeys_window_key unique (tenant_id, cache_key, window_start, window_minutes)
);

create index cache_hotkeys_tenant_window_idx on cache_hotkeys (tenant_id, window_start desc, hotness_score desc);

create table cache_operation_logs (
    id              bigint generated always as identity primary key,
    request_id      varchar(64)  not null,
    tenant_id       varchar(64)  not null,
    operation       varchar(32)  not null,
    cache_key       varchar(512),
    outcome         varchar(16)  not null,
    latency_us      bigint,
    value_bytes     bigint,
    error_code      varchar(32),
    actor           varchar(255),
    occurred_at     timestamptz  not null,
    created_at      timestamptz  not null default now(),
    constraint cache_operation_logs_request_key unique (request_id, occurred_at, operation)
);

create index cache_operation_logs_tenant_time_idx on cache_operation_logs (tenant_id, occurred_at desc);

create index cache_operation_logs_time_idx on cache_operation_logs (occurred_at);
