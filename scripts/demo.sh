#!/usr/bin/env bash
# The main demo: the order and inventory services, each with its own
# PostgreSQL database and its own outbox-relay, talking only through a
# Kafka-protocol broker (tansu). Places a few hundred orders against
# limited stock while the inventory service and the order relay are
# SIGKILLed and restarted, then prints a consistency report and exits
# non-zero if any invariant fails. Works on a fresh machine: it installs
# what is missing first. Arguments replace the default `--chaos`
# (e.g. `--orders 500 --chaos`, or `--orders 100` for a run without crashes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_build_deps
ensure_postgres
ensure_tansu
log "building the services, the relay and the demo runner"
cargo build --locked -p outbox-relay -p order-inventory

log "running the order/inventory flow"
if [ "$#" -eq 0 ]; then set -- --chaos; fi
exec "$TARGET_DIR"/debug/order-inventory-demo --tansu-bin "$TANSU_BIN" "$@"
