#!/usr/bin/env bash
# Outbox vs 2PC vs 3PC on the order/inventory operation: runs the same
# workload with each, then the fault scenarios (coordinator SIGKILLed after
# prepare, inventory unreachable, a 3PC participant cut off after
# PreCommit), and writes target/compare/report.md (also printed).
#
# Needs PostgreSQL on 127.0.0.1:5432 (max_prepared_transactions > 0; set up
# by ensure_prepared_transactions, which says so before it restarts
# PostgreSQL) and MariaDB on 127.0.0.1:3306 (root, no password;
# override with OUTBOX_TEST_MYSQL_URL). Every run creates its own databases
# and drops them. Arguments go to `outbox-compare run` (e.g. --orders 500).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_prepared_transactions
ensure_mariadb
export OUTBOX_TEST_MYSQL_URL="${OUTBOX_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
if ! (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; then
  echo "MariaDB is not reachable on 127.0.0.1:3306" >&2
  exit 1
fi
log "building outbox-compare"
cargo build --quiet --release -p outbox-coordinator --bin outbox-compare
log "running the comparison"
exec "$TARGET_DIR"/release/outbox-compare run "$@"
