# shellcheck shell=bash
# Makes sure Redis and PostgreSQL answer on their standard local ports,
# installing them with apt and starting them when they are absent.
# Sourced by scripts/start, scripts/test and .ci/run.

# Whether the caller chose a Redis: scripts/start then starts none of its own.
REDIS_URL_GIVEN=${REDIS_URL:+yes}
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

# The Redis of scripts/start, apart from the throwaway one the tests use on
# 6379: its own redis-server on 127.0.0.1:$REDIS_PORT (6380) run from
# compose/redis.conf (append-only file, snapshots, noeviction), its data in
# var/redis/ (git-ignored), its password REDIS_PASSWORD or, when unset, one
# generated once into var/redis/password. The password reaches redis-server
# on standard input, never on a command line. Sets REDIS_URL.
ensure_persistent_redis() {
  local dir="$PWD/var/redis" port="${REDIS_PORT:-6380}" password
  mkdir -p "$dir"
  chmod 700 "$PWD/var" "$dir"
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    password=$REDIS_PASSWORD
  else
    if [ ! -s "$dir/password" ]; then
      (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$dir/password")
      log "generated a Redis password into var/redis/password"
    fi
    password=$(cat "$dir/password")
  fi
  # It goes into REDIS_URL as it is: keep to characters a URL carries.
  if ! [[ $password =~ ^[A-Za-z0-9._~-]+$ ]]; then
    log "REDIS_PASSWORD may only hold letters, digits and . _ ~ - (try: openssl rand -hex 24)"
    return 1
  fi
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  local answer
  answer=$(REDISCLI_AUTH="$password" redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" ping 2>&1 || true)
  if [ "$answer" != PONG ]; then
    if [ -n "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" ]; then
      log "a Redis on 127.0.0.1:$port refuses this password (${answer//$'\n'/; }): stop it, or set REDIS_PORT or REDIS_PASSWORD"
      return 1
    fi
    log "starting a persistent redis-server on 127.0.0.1:$port (data in var/redis/)"
    redis-server compose/redis.conf --port "$port" --bind 127.0.0.1 --protected-mode yes \
      --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      - <<<"requirepass $password" >/dev/null
    # Loading a large append-only file takes a while: Redis answers LOADING meanwhile.
    for _ in $(seq 600); do
      answer=$(REDISCLI_AUTH="$password" redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" ping 2>&1 || true)
      [ "$answer" = PONG ] && break
      sleep 0.1
    done
    if [ "$answer" != PONG ]; then
      log "redis did not start ($answer); see var/redis/redis.log"
      return 1
    fi
  fi
  REDIS_URL="redis://:$password@127.0.0.1:$port"
  export REDIS_URL
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
