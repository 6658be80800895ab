-- Namespaces (API.md §10): the design's cache_configs, one row per prefix of
-- a tenant that changed its namespaces. A tenant listed in
-- namespace_tenants has exactly its rows (the five defaults were copied in
-- at its first change); any other tenant has the defaults. Every api
-- instance and worker reloads both tables every few seconds.

delete from cache_configs;

alter table cache_configs
    drop column max_value_bytes,
    drop column eviction_policy,
    drop column preload_enabled,
    drop column settings,
    alter column default_ttl_seconds set not null,
    alter column compression_min_bytes type bigint,
    alter column compression_min_bytes set not null,
    add column ttl_jitter double precision not null default 0.1
        check (ttl_jitter >= 0 and ttl_jitter <= 0.5),
    add column compression boolean not null default true,
    add column max_keys bigint not null default 0 check (max_keys >= 0),
    add column over_limit varchar(16) not null default 'evict_lru'
        check (over_limit in ('reject', 'evict_lru', 'evict_lfu')),
    add column access varchar(16) not null default 'read_write'
        check (access in ('read_write', 'read_only', 'write_only')),
    add column near_cache boolean not null default false,
    add column encrypted boolean not null default false;

alter table cache_configs add constraint cache_configs_compression_min_bytes_check2
    check (compression_min_bytes between 0 and 4294967295);

create table namespace_tenants (
    tenant_id  varchar(64) primary key,
    changed_at timestamptz not null default now()
);
