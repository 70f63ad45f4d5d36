#!/usr/bin/env bash
# Aggregated serving with KV-aware routing: one frontend (--router-mode kv) and two workers.
# Extra arguments go to both workers.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_nats
start $SWITCHYARD worker --port 0 --worker-id worker-a --nats "$NATS_URL" "$@"
start $SWITCHYARD worker --port 0 --worker-id worker-b --nats "$NATS_URL" "$@"
start $SWITCHYARD frontend --port "$HTTP_PORT" --nats "$NATS_URL" --router-mode kv --migration-limit 3
wait_any
