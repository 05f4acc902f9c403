#!/usr/bin/env bash
# What the outbox row costs a business transaction, statement by statement,
# with pgbench (no relay, no broker): the order alone, plus a plain second
# row (the floor), plus a row shaped like outbox.message with only a primary
# key, plus the real outbox.message insert. Prints tps and the ratio to the
# order alone. Uses its own database, outbox_pgbench, dropped afterwards.
#
#   bash scripts/pgbench-row.sh [SECONDS] [CLIENTS]      # default 6 s, 16 clients
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
secs=${1:-6}
clients=${2:-16}
db=outbox_pgbench
url_base=${OUTBOX_TEST_DATABASE_URL%/*}
url="$url_base/$db"
psql "$OUTBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>&1 | grep -v NOTICE || true
trap 'psql "$OUTBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db"' EXIT
psql "$url" -q -v ON_ERROR_STOP=1 -c "CREATE SCHEMA outbox" $(printf -- '-f %s ' outbox/migrations/*.sql)
psql "$url" -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE bench_order (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer bigint NOT NULL, sku text NOT NULL, qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())" \
  -c "CREATE TABLE bench_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, msg_key bytea, payload bytea, created_at timestamptz NOT NULL DEFAULT now())" \
  -c "CREATE TABLE bare_message (LIKE outbox.message INCLUDING DEFAULTS INCLUDING IDENTITY)" \
  -c "ALTER TABLE bare_message ADD PRIMARY KEY (seq), ALTER COLUMN shard DROP NOT NULL"
alone=""
for script in order order_plain_row order_bare_row order_outbox; do
  tps=$(pgbench "$url" -n -c "$clients" -j 2 -T "$secs" -f "bench/pgbench/$script.sql" 2>/dev/null \
    | awk '/^tps/ {print $3}')
  alone=${alone:-$tps}
  awk -v s="$script" -v t="$tps" -v a="$alone" 'BEGIN { printf "%-18s %10.0f tps   alone/this %.2f\n", s, t, a / t }'
done
