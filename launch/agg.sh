#!/usr/bin/env bash
# Aggregated serving: one frontend and one worker, discovering each other over NATS.
# Extra arguments go to the worker (e.g. --model DIR --engine mocker).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_nats
start $SWITCHYARD worker --port 0 --nats "$NATS_URL" "$@"
start $SWITCHYARD frontend --port "$HTTP_PORT" --nats "$NATS_URL" --migration-limit 3
wait_any
