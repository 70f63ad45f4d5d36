#!/usr/bin/env bash
# Disaggregated serving: one frontend, one prefill worker, one decode worker. The frontend sends
# each prompt to the prefill worker, which keeps its KV; the decode worker reads those blocks
# from the prefill worker's transfer agent and generates the rest.
# Extra arguments go to both workers (e.g. --engine mocker).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_nats
start $SWITCHYARD worker --port 0 --worker-id prefill-a --disaggregation-mode prefill --nats "$NATS_URL" "$@"
start $SWITCHYARD worker --port 0 --worker-id decode-a --disaggregation-mode decode --nats "$NATS_URL" "$@"
start $SWITCHYARD frontend --port "$HTTP_PORT" --nats "$NATS_URL" --migration-limit 3 ${FRONTEND_ARGS:-}
wait_any
