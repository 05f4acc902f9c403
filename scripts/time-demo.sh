#!/usr/bin/env bash
# Measures what a newcomer waits for: clone -> demo report, on a fresh
# clone of this checkout's HEAD with an empty build folder, and prints the
# phases (clone, install, build, run) and the total. The crates' sources
# come from cargo's download cache (~/.cargo/registry) when they are
# there, as on any machine that has built a Rust project before; nothing
# of this workspace's build is reused. DEMO_PROFILE picks the build
# profile (default: demo.sh's); arguments go to the demo.
#
#   bash scripts/time-demo.sh                  # the default demo
#   DEMO_PROFILE=release bash scripts/time-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/outbox-time-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=$SECONDS
git clone --quiet "$repo" "$work/outbox"
clone=$((SECONDS - start))
cd "$work/outbox"
# A build folder of its own, empty: CARGO_TARGET_DIR from the caller's
# environment would reuse its build.
unset CARGO_TARGET_DIR
log=$work/demo.log
set +e
bash scripts/demo.sh "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
total=$((SECONDS - start))
took() { sed -E 's/\x1b\[[0-9;]*m//g' "$log" | sed -nE "s/^==> $1 took ([0-9]+)s$/\\1/p" | tail -n1; }
echo
echo "clone -> report: ${total}s (clone ${clone}s, install $(took install)s, build $(took build)s, run $(took run)s; profile ${DEMO_PROFILE:-default}; demo exit $status)"
exit "$status"
