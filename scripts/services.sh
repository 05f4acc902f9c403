# Shared by scripts/*.sh: makes sure the local services the project needs are
# there, idempotently. Source it; it defines functions and exports paths.

# The Kafka-protocol broker used for tests and the demo. Pinned: tests rely
# on its behaviour.
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
TANSU_ROOT="${TANSU_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox/tansu-$TANSU_VERSION}"
export TANSU_BIN="$TANSU_ROOT/bin/tansu"
export OUTBOX_TEST_DATABASE_URL="${OUTBOX_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# Where cargo puts the binaries the scripts run (CARGO_TARGET_DIR if set).
export TARGET_DIR="${CARGO_TARGET_DIR:-target}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# PostgreSQL on 127.0.0.1:5432, with prepared transactions enabled (the 2PC
# comparison needs max_prepared_transactions > 0).
ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; return 1; }
  local mpt
  mpt=$(psql "$OUTBOX_TEST_DATABASE_URL" -Atc 'SHOW max_prepared_transactions')
  if [ "$mpt" = "0" ]; then
    log "enabling prepared transactions (max_prepared_transactions = 64) and restarting PostgreSQL"
    psql "$OUTBOX_TEST_DATABASE_URL" -qc 'ALTER SYSTEM SET max_prepared_transactions = 64'
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
}

# MariaDB on 127.0.0.1:3306 (root, no password): a participant of the
# 2PC/3PC comparison and its tests.
ensure_mariadb() {
  if ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 30); do mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
  fi
  mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1 || { echo "MariaDB is not reachable on 127.0.0.1:3306" >&2; return 1; }
}

# What the build needs beyond Rust and a C compiler: OpenSSL's headers and
# pkg-config (librdkafka's TLS and SASL link the system OpenSSL). Installed
# with apt on Debian or Ubuntu when missing; elsewhere, one line on what to
# install.
ensure_build_deps() {
  if pkg-config --exists openssl 2>/dev/null; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    log "installing OpenSSL headers and pkg-config (libssl-dev pkg-config) with apt-get"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq libssl-dev pkg-config >/dev/null
    return 0
  fi
  echo "the build needs OpenSSL's development files and pkg-config (e.g. libssl-dev and pkg-config, or openssl-devel and pkgconf)" >&2
  return 1
}

# The pinned tansu, built once into a cache folder (about 10 minutes).
ensure_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "installing tansu $TANSU_VERSION into $TANSU_ROOT (once; about 10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TANSU_ROOT" --quiet
  "$TANSU_BIN" --version >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts tansu in the background on $1 (in-memory storage), logging to $2;
# waits until it accepts connections. Prints its pid.
start_tansu() {
  local port=$1 logfile=$2 dir
  dir=$(mktemp -d)
  (cd "$dir" && exec "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/ >"$logfile" 2>&1) &
  local pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$pid"; return 0; fi
    sleep 0.1
  done
  echo "tansu did not start on port $port; see $logfile" >&2
  return 1
}
