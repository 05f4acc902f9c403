#!/usr/bin/env bash
# The container image's HEALTHCHECK (relay/Dockerfile): GET /healthz from the
# relay's own HTTP server; healthy when it answers 200. Plain bash, through
# /dev/tcp, since the image has no curl.
#
#   outbox-relay-healthcheck [ADDR:PORT]
#
# The address defaults to OUTBOX_HTTP_LISTEN's, else 0.0.0.0:9187; a
# wildcard address (0.0.0.0, [::]) is probed on loopback. A relay given
# --http-listen as a flag should get the same address here, or have
# OUTBOX_HTTP_LISTEN set instead of the flag.
set -euo pipefail
listen=${1:-${OUTBOX_HTTP_LISTEN:-0.0.0.0:9187}}
port=${listen##*:}
host=${listen%:*}
host=${host#[}
host=${host%]}
case $host in
  "" | 0.0.0.0) host=127.0.0.1 ;;
  ::) host=::1 ;;
esac
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
# The status line: HTTP/1.1 200 OK
read -r -t 5 _ status _ <&3
[[ $status == 200 ]]
