# shellcheck shell=bash
# Makes sure Redis and PostgreSQL answer on their standard local ports,
# installing them with apt and starting them when they are absent.
# Sourced by scripts/start, scripts/test and .ci/run.

: "${REDIS_URL:=redis://127.0.0.1:6379}"
: "${DATABASE_URL:=postgres://postgres:postgres@127.0.0.1:5432/cache_service}"
export REDIS_URL DATABASE_URL

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_answers() {
  command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
}

postgres_answers() {
  command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432
}

ensure_redis() {
  redis_answers && return 0
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis_answers && return 0; sleep 0.1; done
  log "redis did not start"; return 1
}

ensure_postgres() {
  postgres_answers && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting postgresql $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 100); do postgres_answers && break; sleep 0.1; done
  postgres_answers || { log "postgres did not start"; return 1; }
  # A fresh Debian cluster asks for a password on TCP: give the postgres role
  # the one DATABASE_URL uses by default (ignored where auth is trust).
  as_root su postgres -c "psql -q -c \"alter user postgres password 'postgres'\"" >/dev/null 2>&1 || true
}

ensure_services() {
  ensure_redis
  ensure_postgres
}
