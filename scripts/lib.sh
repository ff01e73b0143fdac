# Shared set-up for scripts/run and scripts/test: a virtual environment with the project installed, and
# the local services the project needs (started with this machine kind's own commands when they are down).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

log() { printf '\033[1m[ultra]\033[0m %s\n' "$*" >&2; }

ensure_venv() {
  local extras="${1:-}"
  if [ ! -x "$PY" ]; then
    log "creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  # Reinstall only when the dependency list changed since the last install (or the extras are missing).
  local stamp="$VENV/.ultra-installed" hash have=""
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  if [ "${have%%:*}" != "$hash" ] || { [ -n "$extras" ] && [ "${have#*:}" != "$extras" ]; }; then
    log "installing ultra-tasks${extras:+ with [$extras]} into $VENV"
    local install_log="$VENV/install.log"
    # setuptools prints deprecation banners during editable installs; keep them in a log unless it fails
    if ! { "$PY" -m pip install --disable-pip-version-check --upgrade pip \
           && "$PY" -m pip install --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"; } >"$install_log" 2>&1; then
      cat "$install_log" >&2
      log "installation failed (log above, also in $install_log)"
      return 1
    fi
    echo "$hash:$extras" > "$stamp"
  fi
}

redis_up() { "$PY" - "$1" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}

ensure_redis() {
  local url="${1:-${REDIS_URL:-redis://localhost:6379/0}}"
  redis_up "$url" && return 0
  if command -v redis-server >/dev/null; then
    log "Redis is not answering at $url; starting a local redis-server"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    for _ in $(seq 1 50); do redis_up "$url" && return 0; sleep 0.2; done
  fi
  log "Redis is required at $url and could not be started (install redis-server, or set REDIS_URL)"
  return 1
}

pg_up() { "$PY" - "$1" <<'PY' 2>/dev/null
import sys, sqlalchemy
sqlalchemy.create_engine(sys.argv[1]).connect().close()
PY
}

ensure_postgres() {
  local url="$1"
  pg_up "$url" && return 0
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    log "PostgreSQL is not answering; starting the local cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 50); do pg_up "$url" && return 0; sleep 0.2; done
  fi
  log "PostgreSQL is required at $url and could not be started"
  return 1
}

rabbitmq_up() { "$PY" - "$1" <<'PY' 2>/dev/null
import sys
from kombu import Connection
with Connection(sys.argv[1], connect_timeout=2) as conn:
    conn.connect()
PY
}

# RabbitMQ, the alternative broker: the queue tests also run on it (tests/integration/test_rabbitmq.py).
ensure_rabbitmq() {
  local url="$1"
  rabbitmq_up "$url" && return 0
  if command -v rabbitmq-server >/dev/null; then
    log "RabbitMQ is not answering at ${url%%@*}@...; starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do rabbitmq_up "$url" && return 0; sleep 1; done
  fi
  log "RabbitMQ could not be reached or started: the RabbitMQ queue tests fail on CI and skip elsewhere"
  return 1
}

# Headless Chromium (Debian's `chromium` package) for the status page's browser test: installed with apt when
# missing on CI (CI=true) or when asked (ULTRA_INSTALL_CHROMIUM=1); elsewhere that test skips without it.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  [ "${CI:-}" = "true" ] || [ "${ULTRA_INSTALL_CHROMIUM:-}" = "1" ] || return 0
  if ! command -v apt-get >/dev/null || [ "$(id -u)" -ne 0 ]; then
    log "chromium is missing and cannot be installed here (needs apt-get as root): apt-get install chromium"
    return 1
  fi
  log "installing chromium (headless browser for the status page test)"
  local apt_log="${TMPDIR:-/tmp}/ultra-apt-chromium.log"
  # a fresh machine's package lists may be missing or stale: update once and retry before giving up
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
         || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; } >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    log "chromium installation failed (full log in $apt_log)"
    return 1
  fi
}
