#!/bin/sh
# Run by the Dockerfiles' first stage (relay/Dockerfile,
# examples/order-inventory/Dockerfile) in a copy of the repository: writes
# the dependency recipe into DIR: every manifest of the workspace and
# Cargo.lock, with a stub in place of each target's root source file. It
# changes only when a manifest does (or a target is added or removed), so
# the image's dependency layer, built from it, is rebuilt only then.
set -eu
out="$1"
mkdir -p "$out"
find . -path ./target -prune -o \( -name Cargo.toml -o -name Cargo.lock \) -print \
  | xargs cp --parents -t "$out"
find . -path ./target -prune -o -type f \( -path '*/src/lib.rs' \
  -o -path '*/src/main.rs' -o -path '*/src/bin/*/main.rs' \
  -o \( -path '*/src/bin/*.rs' ! -path '*/src/bin/*/*' \) -o -name build.rs \) -print \
  | while read -r f; do
      mkdir -p "$out/$(dirname "$f")"
      case $f in
        */lib.rs) echo '//! Stub.' ;;
        *) printf '//! Stub.\nfn main() {}\n' ;;
      esac > "$out/$f"
    done
