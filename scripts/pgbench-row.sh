#!/usr/bin/env bash
# What the outbox row costs a business transaction, statement by statement,
# with pgbench (no relay, no broker): the order alone, plus a plain second
# row (the floor), plus a row shaped like outbox.message with only a primary
# key, plus the real outbox.message insert. The four run in turn, ROUNDS
# times (so a busy moment hits all of them, not one), and each prints its
# median tps with the spread, and the ratio to the order alone. The last
# line is the target's: the outbox row against the plain row, the median of
# the rounds' ratios. Uses its own database, outbox_pgbench, dropped
# afterwards.
#
# Statements go as prepared statements (pgbench -M prepared), as the
# library sends them (sqlx prepares and caches every query); with
# PGBENCH_MODE=simple each is parsed and planned every time, which
# weighs the outbox's longer statement more.
#
# PGBENCH_PARTS=1 adds two copies of outbox.message, with its indexes and
# constraints: one without the wake-up trigger, one without the trigger
# and with a plain shard column instead of the generated one. The steps
# from the plain row to the real one are then each part's cost.
#
#   bash scripts/pgbench-row.sh [SECONDS] [CLIENTS] [ROUNDS]   # default 6 s, 16 clients, 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
secs=${1:-6}
clients=${2:-16}
rounds=${3:-3}
db=outbox_pgbench
url_base=${OUTBOX_TEST_DATABASE_URL%/*}
url="$url_base/$db"
psql "$OUTBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>&1 | grep -v NOTICE || true
results=$(mktemp)
trap 'rm -f "$results"; psql "$OUTBOX_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db"' EXIT
psql "$url" -q -v ON_ERROR_STOP=1 -c "CREATE SCHEMA outbox" $(printf -- '-f %s ' outbox/migrations/*.sql)
psql "$url" -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE bench_order (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer bigint NOT NULL, sku text NOT NULL, qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())" \
  -c "CREATE TABLE bench_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, msg_key bytea, payload bytea, created_at timestamptz NOT NULL DEFAULT now())" \
  -c "CREATE TABLE bare_message (LIKE outbox.message INCLUDING DEFAULTS INCLUDING IDENTITY)" \
  -c "ALTER TABLE bare_message ADD PRIMARY KEY (seq), ALTER COLUMN shard DROP NOT NULL" \
  -c "CREATE TABLE message_no_trigger (LIKE outbox.message INCLUDING ALL)" \
  -c "CREATE TABLE message_no_shard (LIKE outbox.message INCLUDING ALL)" \
  -c "ALTER TABLE message_no_shard DROP COLUMN shard, ADD COLUMN shard smallint"
scripts=(order order_plain_row order_bare_row order_outbox)
if [ "${PGBENCH_PARTS:-0}" = 1 ]; then
  scripts+=(order_outbox_no_trigger order_outbox_no_shard)
fi
for round in $(seq 1 "$rounds"); do
  for script in "${scripts[@]}"; do
    tps=$(pgbench "$url" -n -M "${PGBENCH_MODE:-prepared}" -c "$clients" -j 2 -T "$secs" -f "bench/pgbench/$script.sql" 2>/dev/null \
      | awk '/^tps/ {print $3}')
    echo "$round $script $tps" >>"$results"
  done
done
python3 - "$results" "$rounds" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
tps = {}
for rnd, script, t in rows:
    tps.setdefault(script, {})[int(rnd)] = float(t)
def spread(v):
    return f"{statistics.median(v):8.0f} tps ({min(v):.0f}–{max(v):.0f})"
alone = statistics.median(tps["order"].values())
for script, by_round in tps.items():
    v = list(by_round.values())
    print(f"{script:18s} {spread(v)}   alone/this {alone / statistics.median(v):.2f}")
ratios = [tps["order_plain_row"][r] / tps["order_outbox"][r] for r in tps["order"]]
print(f"order + outbox row vs order + plain row: {statistics.median(ratios):.2f}× the time "
      f"(median of {len(ratios)} rounds; each: {', '.join(f'{r:.2f}' for r in ratios)}; target ≤ 1.10)")
PY
