#!/usr/bin/env bash
# The benchmark: measures outbox-relay against the limits of this machine,
# in one run, and writes target/bench/report.md and report.json.
#
#   bash scripts/bench.sh            # full run (1,000,000-message backlogs; under 15 minutes)
#   bash scripts/bench.sh --smoke    # about a minute; what CI runs
#   bash scripts/bench.sh --only drain,memory --relay-arg=--batch-size=2000
#
# Arguments are passed to the outbox-bench program (see its --help). Exits
# non-zero only when a measurement failed (messages missing, a relay
# crashed, a timeout); missed targets are reported, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_build_deps
ensure_prepared_transactions  # the 2PC scenario
ensure_tansu
log "building outbox-relay and outbox-bench (release)"
cargo build --release --locked -p outbox-relay -p outbox-bench

run_dir=$(mktemp -d -t outbox-bench.XXXXXX)
port=$(free_port)
brokers="127.0.0.1:$port"
tansu_pid=""
cleanup() {
  if [ -n "$tansu_pid" ]; then
    kill -TERM "$tansu_pid" 2>/dev/null || true
    # Not our child (started in a subshell): poll until it is gone.
    for _ in $(seq 1 50); do kill -0 "$tansu_pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
trap cleanup EXIT

log "starting tansu on $brokers (log: $run_dir/tansu.log)"
tansu_pid=$(start_tansu "$port" "$run_dir/tansu.log")

log "running the benchmark (relay logs: target/bench/logs/)"
# The program creates (and drops) its own databases, outbox_bench_*, and
# its own topics; it starts and stops every relay it measures.
"$TARGET_DIR"/release/outbox-bench \
  --database-url "$OUTBOX_TEST_DATABASE_URL" \
  --brokers "$brokers" \
  --relay-bin "$TARGET_DIR"/release/outbox-relay \
  --out-dir target/bench \
  "$@"
