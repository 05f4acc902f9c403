#!/usr/bin/env bash
# Validates every Docker Compose file in the repository against the
# Compose Specification's JSON schema, with no Docker engine: the pinned
# check-jsonschema (PyPI) carries the schema (`vendor.compose-spec`).
# Also refuses the obsolete top-level `version:` key (Compose v2 ignores
# it and warns). Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

CHECK_JSONSCHEMA_VERSION=0.39.0
venv="${XDG_CACHE_HOME:-$HOME/.cache}/outbox/check-jsonschema-$CHECK_JSONSCHEMA_VERSION"
if [ ! -x "$venv/bin/check-jsonschema" ]; then
  command -v python3 >/dev/null || { echo "the compose check needs python3" >&2; exit 1; }
  log "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $venv (once)"
  python3 -m venv "$venv" || {
    echo "cannot create a Python virtual environment: install python3-venv" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi
check() { "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$@"; }

# The check itself must be able to fail: a file with an unknown service
# key is refused.
bad=$(mktemp --suffix=.yml)
trap 'rm -f "$bad"' EXIT
printf 'services:\n  app:\n    image: x\n    healthcheck: {test: ["CMD", "true"], intervall: 5s}\n' > "$bad"
if check "$bad" >/dev/null 2>&1; then
  echo "check-jsonschema accepted an invalid compose file; the compose check is broken" >&2
  exit 1
fi

mapfile -t files < <(git ls-files '*docker-compose*.yml' '*docker-compose*.yaml' '*compose.yml' '*compose.yaml')
[ "${#files[@]}" -gt 0 ] || { echo "no compose files found" >&2; exit 1; }
log "compose schema check: ${files[*]}"
check "${files[@]}"
for f in "${files[@]}"; do
  if grep -qE '^version:' "$f"; then
    echo "$f: remove the top-level 'version:' key (obsolete in Compose v2)" >&2
    exit 1
  fi
done
