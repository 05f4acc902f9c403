#!/usr/bin/env bash
# The chaos harness: three relays against a private PostgreSQL cluster and
# a tansu broker, a writer committing keyed messages through the library,
# and seeded faults (relays SIGKILLed and SIGSTOPped past their lease,
# PostgreSQL restarted, the broker paused); then an independent read of
# the topic, checked against what committed.
#
#   bash scripts/chaos.sh                       # 1 minute, random seed (printed)
#   bash scripts/chaos.sh --minutes 5 --seed 42
#   bash scripts/chaos.sh --broker-storage sqlite   # broker faults are kill + restart
#   bash scripts/chaos.sh --broker mock             # librdkafka's mock cluster, broker-side errors
#   bash scripts/chaos.sh --relay-arg=--in-flight=1
#
# Arguments go to the outbox-chaos program (see its --help). Prints one
# summary line (and details above it when something is wrong) and exits
# non-zero on lost or phantom messages, per-key order violations,
# stalls, or too few faults (stale tails are reported only). Logs and
# report: target/chaos/<run>/
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

# The harness runs its own PostgreSQL cluster (it restarts it), from the
# PostgreSQL 15 binaries; the shared server on 5432 is not used.
ensure_build_deps
ensure_tansu
log "building outbox-relay and outbox-chaos (debug, as the tests)"
# The whole workspace's binaries, so dependencies are built with the same
# features as for the tests and their build is reused (building only these
# two packages would compile tokio, sqlx and rdkafka again).
cargo build --locked --workspace --bins

exec "$TARGET_DIR"/debug/outbox-chaos \
  --tansu-bin "$TANSU_BIN" \
  --relay-bin "$TARGET_DIR"/debug/outbox-relay \
  "$@"
