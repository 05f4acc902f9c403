#!/usr/bin/env bash
# One relay draining a 1,000,000-message backlog with statistics on the
# table (ANALYZE after the load, as autovacuum does on a real one), with
# the settings of the fault-injection runs (--lease 5s --batch-size 200).
# Prints the pending count and the longest running fetch every 5 s: the
# reproduction of "stall 2" (fetches that read the whole backlog once the
# planner had statistics).
#
#   bash scripts/drain-backlog.sh [RELAY_BINARY] [SECONDS]
#
# Uses the local PostgreSQL (a database of its own, dropped afterwards)
# and a tansu broker on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_tansu
BIN=${1:-}
SECS=${2:-90}
if [ -z "$BIN" ]; then
  cargo build --locked -p outbox-relay
  BIN="$TARGET_DIR"/debug/outbox-relay
fi
admin=$OUTBOX_TEST_DATABASE_URL
db=outbox_drain_$$
url="${admin%/*}/$db"
dir=$(mktemp -d)
relay_pid=""; tansu_pid=""
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  [ -n "$tansu_pid" ] && kill "$tansu_pid" 2>/dev/null || true
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

psql -q "$admin" -c "CREATE DATABASE $db"
"$BIN" migrate --database-url "$url" >/dev/null
log "loading 1,000,000 messages (1,000 keys, 200-byte payloads) and analysing"
psql -q "$url" -c "INSERT INTO outbox.message (id, topic, msg_key, payload)
  SELECT gen_random_uuid(), 'drain', convert_to('key-' || (g % 1000), 'UTF8'),
         convert_to(repeat('x', 200), 'UTF8')
  FROM generate_series(1, 1000000) g" -c "ANALYZE outbox.message"
port=$(free_port)
tansu_pid=$(start_tansu "$port" "$dir/tansu.log")
"$TANSU_BIN" topic create --broker "tcp://127.0.0.1:$port" --partitions 6 drain >/dev/null
log "relay log: $dir/relay.log"
RUST_LOG=info "$BIN" --database-url "$url" --brokers "127.0.0.1:$port" \
  --http-listen 127.0.0.1:0 --lease 5s --batch-size 200 --poll-interval 500ms \
  --sweep-schedule '*/3 * * * * *' >"$dir/relay.log" 2>&1 &
relay_pid=$!
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$SECS" ]; do
  sleep 5
  pending=$(psql -Atq "$url" -c "SELECT count(*) FROM outbox.message WHERE status = 'pending'")
  fetch=$(psql -Atq "$url" -c "SELECT coalesce(max(extract(epoch FROM now() - query_start))::numeric(6,2), 0)
    FROM pg_stat_activity WHERE datname = '$db' AND application_name = 'outbox-relay'
      AND state = 'active' AND query LIKE '%blocked%'")
  echo "t=$(( $(date +%s) - start ))s pending=$pending longest_running_fetch=${fetch}s"
  [ "$pending" = "0" ] && break
done
echo "lease changes: $(grep -c 'shard ownership changed' "$dir/relay.log" || true)"
