#!/usr/bin/env bash
# The test command: formatting, lints, unit and doc tests, and the
# integration tests against the local PostgreSQL and a tansu broker each
# test starts for itself. Works on a fresh machine: it installs what is
# missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_build_deps
ensure_prepared_transactions  # the coordinator's tests use PREPARE TRANSACTION
ensure_mariadb
ensure_tansu

bash scripts/check-compose.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
# Two test binaries at a time at most would oversubscribe a 2-core machine;
# cargo runs binaries one after another and each binary's tests in parallel.
cargo test --workspace --all-targets --locked -- --test-threads="${TEST_THREADS:-2}"
cargo test --workspace --doc --locked
log "all tests passed"
