#!/usr/bin/env bash
# The main demo: the order and inventory services, each with its own
# PostgreSQL database and its own outbox-relay, talking only through Kafka.
# Places a few hundred orders against limited stock while the inventory
# service and the order relay are SIGKILLed and restarted, then prints a
# consistency report and exits non-zero if any invariant fails.
#
# The broker is librdkafka's mock Kafka cluster, hosted by the demo runner
# (real Kafka protocol on real ports; nothing to install). `--broker tansu`
# uses the tansu broker instead (built once, 10 to 30 minutes), and
# `--brokers HOST:PORT` a Kafka cluster of your own.
#
# Works on a fresh machine: installs what is missing first (OpenSSL headers;
# PostgreSQL on Debian/Ubuntu when there is none). It does not change the
# settings of a PostgreSQL that is already there. Arguments replace the
# default `--chaos` (e.g. `--orders 500 --chaos`, or `--orders 300` for a
# run without crashes); `--help` lists them all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

# The build profile that gave the shortest clone-to-report time on two
# cores (docs/demo.md, "How long it takes"); DEMO_PROFILE overrides it.
profile="${DEMO_PROFILE:-demo}"
phase_start=$SECONDS
phase() { # NAME: prints how long the phase that just ended took
  printf '\033[1m==> %s took %ds\033[0m\n' "$1" $((SECONDS - phase_start)) >&2
  phase_start=$SECONDS
}

if [ "$#" -eq 0 ]; then set -- --chaos; fi
extra=()
for a in "$@"; do
  if [ "$a" = tansu ] || [ "$a" = --broker=tansu ]; then
    ensure_tansu
    extra=(--tansu-bin "$TANSU_BIN")
  fi
done
ensure_build_deps
ensure_postgres
phase install

log "building the relay, both services and the demo runner (profile $profile)"
cargo build --locked --profile "$profile" -p outbox-relay -p order-inventory --bins
phase build

dir="$TARGET_DIR/$profile"
[ "$profile" = dev ] && dir="$TARGET_DIR/debug"
log "running the order/inventory flow"
"$dir/order-inventory-demo" "${extra[@]}" "$@"
phase run
