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

# Runs a command as root (directly, or through sudo when there is one).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian/Ubuntu packages with apt-get, or says what to install
# elsewhere and fails.
apt_install() {
  local what="$1"; shift
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$what is missing: install it (packages $*) and run this again" >&2
    return 1
  fi
  log "installing $what with apt-get ($*)"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# The newest PostgreSQL cluster's version folder under /etc/postgresql.
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n1; }

# PostgreSQL on 127.0.0.1:5432, answering the superuser `postgres` without
# a password from this machine (the tests and the demo create scratch
# databases). Started if it is installed but down; installed with apt-get
# when it is not installed at all. Touches nothing else: the settings the
# 2PC comparison needs are ensure_prepared_transactions's.
ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    apt_install PostgreSQL postgresql postgresql-contrib || return 1
    # A cluster this script just created: let local TCP connections in
    # without a password, as the tests' URLs expect. Never done to a
    # cluster that was there before.
    local hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
    log "letting local connections to the new cluster in without a password ($hba)"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/; s/^(local\s+all\s+(postgres|all)\s+)\S+/\1trust/' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main restart 2>/dev/null \
      || as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; return 1; }
  psql "$OUTBOX_TEST_DATABASE_URL" -qAtc 'SELECT 1' >/dev/null || {
    echo "PostgreSQL on 127.0.0.1:5432 refused $OUTBOX_TEST_DATABASE_URL: allow that user in (e.g. trust for 127.0.0.1 in pg_hba.conf), or set OUTBOX_TEST_DATABASE_URL" >&2
    return 1
  }
}

# max_prepared_transactions > 0, which PostgreSQL's PREPARE TRANSACTION
# (the 2PC/3PC comparison, its tests and the benchmark's 2PC scenario)
# needs. Setting it means restarting the server, so this says so first and
# does it only when the setting is 0.
ensure_prepared_transactions() {
  ensure_postgres || return 1
  local mpt
  mpt=$(psql "$OUTBOX_TEST_DATABASE_URL" -Atc 'SHOW max_prepared_transactions')
  if [ "$mpt" = "0" ]; then
    log "the 2PC comparison needs prepared transactions: setting max_prepared_transactions = 64 and restarting PostgreSQL once"
    psql "$OUTBOX_TEST_DATABASE_URL" -qc 'ALTER SYSTEM SET max_prepared_transactions = 64'
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main restart
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
}

# MariaDB on 127.0.0.1:3306 (root, no password): a participant of the
# 2PC/3PC comparison and its tests. Installed with apt-get when missing.
ensure_mariadb() {
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ] \
    && ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
    apt_install MariaDB mariadb-server mariadb-client || return 1
  fi
  if ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
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
    apt_install "OpenSSL's headers and pkg-config" libssl-dev pkg-config
    return
  fi
  echo "the build needs OpenSSL's development files and pkg-config (e.g. libssl-dev and pkg-config, or openssl-devel and pkgconf)" >&2
  return 1
}

# The pinned tansu, built once into a cache folder (10 to 30 minutes on
# two cores; cargo's progress bar shows how far it is). The tests and
# `--broker tansu` use it; the demo's default broker needs nothing.
ensure_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "building the tansu $TANSU_VERSION broker into $TANSU_ROOT (once; 10 to 30 minutes on two cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TANSU_ROOT"
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
