#!/usr/bin/env bash
# The quick start (a smaller tour than scripts/demo.sh): a local database, a tansu broker, one outbox-relay, and a
# program that places orders through the outbox and prints each message as
# it arrives from Kafka. Works on a fresh machine: it installs what is
# missing first. Stops everything it started when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_postgres
ensure_tansu
log "building outbox-relay and the quick start"
cargo build --locked -p outbox-relay -p outbox-quickstart

run_dir=$(mktemp -d -t outbox-demo.XXXXXX)
port=$(free_port)
http_port=$(free_port)
brokers="127.0.0.1:$port"
db=outbox_quickstart
db_url="postgres://postgres@127.0.0.1:5432/$db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

log "starting tansu on $brokers (log: $run_dir/tansu.log)"
pids+=("$(start_tansu "$port" "$run_dir/tansu.log")")
"$TANSU_BIN" topic create --broker "tcp://$brokers" --partitions 6 orders >/dev/null

log "creating database $db and the outbox schema"
psql "$OUTBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$TARGET_DIR"/debug/outbox-relay --database-url "$db_url" migrate

log "starting outbox-relay (log: $run_dir/relay.log, metrics: http://127.0.0.1:$http_port/metrics)"
"$TARGET_DIR"/debug/outbox-relay --database-url "$db_url" --brokers "$brokers" \
  --http-listen "127.0.0.1:$http_port" >"$run_dir/relay.log" 2>&1 &
pids+=("$!")

log "placing orders; each line is a message consumed back from Kafka"
"$TARGET_DIR"/debug/outbox-quickstart --database-url "$db_url" --brokers "$brokers" --count "${COUNT:-30}"

log "relay health and metrics"
curl -fsS "http://127.0.0.1:$http_port/healthz"; echo
curl -fsS "http://127.0.0.1:$http_port/metrics" | grep -E '^outbox_(relay_published_total|pending_messages|dead_messages)' || true
psql "$db_url" -c "SELECT status, count(*) FROM outbox.message GROUP BY status"
log "done"
