#!/usr/bin/env bash
# Start or stop the servers the test suite and the demo need.
#   scripts/services.sh up [rabbitmq] [redis] [postgres] [browser]
#                                               start what is not reachable yet
#   scripts/services.sh down                    stop only what `up` started
# Missing Debian packages are installed when run as root; otherwise the servers must already
# be running (the script says which one is missing).
set -euo pipefail

cd "$(dirname "$0")/.."
RUN_DIR="$PWD/.run"
mkdir -p "$RUN_DIR"
export RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-rabbit@localhost}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_packages() {
  local missing=()
  for spec in "$@"; do
    local cmd=${spec%%:*} pkg=${spec##*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "services: ${missing[*]} not installed and not reachable; install them (apt-get install ${missing[*]}) or start the servers yourself." >&2
    exit 1
  fi
  echo "services: installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 240); do port_open "$port" && return 0; sleep 0.5; done
  echo "services: $name did not open port $port" >&2
  exit 1
}

rabbitmq_up() {
  if port_open 5672; then rabbitmq_management; return 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "services: no RabbitMQ on 127.0.0.1:5672; start one (as root: scripts/services.sh up)." >&2
    exit 1
  fi
  ensure_packages rabbitmq-server:rabbitmq-server
  echo "services: starting rabbitmq-server" >&2
  nohup rabbitmq-server >"$RUN_DIR/rabbitmq.log" 2>&1 &
  echo started >"$RUN_DIR/rabbitmq.started"
  # await_startup fails at once while the node is not registered yet: ask again until it waits.
  local started=0
  for _ in $(seq 1 90); do
    if timeout 180 rabbitmqctl -q await_startup >/dev/null 2>&1; then started=1; break; fi
    port_open 5672 && { started=1; break; }
    sleep 2
  done
  if [ "$started" != 1 ]; then
    echo "services: rabbitmq-server did not start; see $RUN_DIR/rabbitmq.log" >&2
    tail -n 20 "$RUN_DIR/rabbitmq.log" >&2
    exit 1
  fi
  wait_port 5672 rabbitmq-server
  rabbitmq_management
}

# The management HTTP API (port 15672): cqrs_status reads unacknowledged messages from it.
rabbitmq_management() {
  port_open 15672 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v rabbitmq-plugins >/dev/null 2>&1; then
    echo "services: RabbitMQ management API not on 127.0.0.1:15672 (rabbitmq-plugins enable rabbitmq_management); cqrs_status shows unacknowledged messages as unknown." >&2
    return 0
  fi
  rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null
  wait_port 15672 rabbitmq_management
}

rabbitmq_down() {
  [ -f "$RUN_DIR/rabbitmq.started" ] || return 0
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  rm -f "$RUN_DIR/rabbitmq.started"
}

redis_up() {
  if port_open 6379; then return 0; fi
  ensure_packages redis-server:redis-server
  echo "services: starting redis-server" >&2
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log" --dir "$RUN_DIR"
  echo started >"$RUN_DIR/redis.started"
  wait_port 6379 redis-server
}

redis_down() {
  [ -f "$RUN_DIR/redis.started" ] || return 0
  [ -f "$RUN_DIR/redis.pid" ] && kill "$(cat "$RUN_DIR/redis.pid")" 2>/dev/null || true
  rm -f "$RUN_DIR/redis.started" "$RUN_DIR/redis.pid"
}

pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1; }

postgres_role() {
  [ "$(id -u)" = 0 ] || return 0
  runuser -u postgres -- psql -q -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'cqrs'" 2>/dev/null \
    | grep -q 1 && return 0
  runuser -u postgres -- psql -q -c "CREATE ROLE cqrs LOGIN SUPERUSER PASSWORD 'cqrs'" >/dev/null
}

postgres_up() {
  if port_open 5432; then postgres_role; return 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "services: no PostgreSQL on 127.0.0.1:5432; start one (as root: scripts/services.sh up)." >&2
    exit 1
  fi
  ensure_packages pg_ctlcluster:postgresql
  local version
  version=$(pg_version)
  pg_lsclusters -h 2>/dev/null | grep -q "^$version *main " || pg_createcluster "$version" main >/dev/null
  echo "services: starting postgresql $version" >&2
  pg_ctlcluster "$version" main start
  echo "$version" >"$RUN_DIR/postgres.started"
  wait_port 5432 postgresql
  postgres_role
}

postgres_down() {
  [ -f "$RUN_DIR/postgres.started" ] || return 0
  pg_ctlcluster "$(cat "$RUN_DIR/postgres.started")" main stop >/dev/null 2>&1 || true
  rm -f "$RUN_DIR/postgres.started"
}

browser_up() {
  # Not a server: the headless Chromium and its driver for the browser test.
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "services: chromium and chromium-driver are missing (apt-get install chromium chromium-driver)." >&2
    exit 1
  fi
  ensure_packages chromium:chromium chromedriver:chromium-driver
}

browser_down() { :; }

action=${1:-up}
shift || true
services=("$@")
[ ${#services[@]} -eq 0 ] && services=(rabbitmq redis postgres browser)

case "$action" in
  up)
    wanted=()
    for s in "${services[@]}"; do
      case "$s" in
        rabbitmq) port_open 5672 || wanted+=(rabbitmq-server:rabbitmq-server) ;;
        redis) port_open 6379 || wanted+=(redis-server:redis-server) ;;
        postgres) port_open 5432 || wanted+=(pg_ctlcluster:postgresql) ;;
        browser) wanted+=(chromium:chromium chromedriver:chromium-driver) ;;
      esac
    done
    [ "$(id -u)" = 0 ] && [ ${#wanted[@]} -gt 0 ] && ensure_packages "${wanted[@]}"
    for s in "${services[@]}"; do "${s}_up"; done
    ;;
  down)
    for s in "${services[@]}"; do "${s}_down"; done
    ;;
  *)
    echo "usage: $0 up|down [rabbitmq] [redis] [postgres] [browser]" >&2
    exit 2
    ;;
esac
