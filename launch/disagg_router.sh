#!/usr/bin/env bash
# Disaggregated serving with KV-aware routing on both pools: one frontend (--router-mode kv),
# two prefill workers and two decode workers. Prompts whose uncached part on the chosen decode
# worker is short are prefilled there (--max-local-prefill-length, default here 256 tokens).
# Extra arguments go to every worker (e.g. --engine mocker).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_nats
for id in prefill-a prefill-b; do
  start $SWITCHYARD worker --port 0 --worker-id "$id" --disaggregation-mode prefill --nats "$NATS_URL" "$@"
done
for id in decode-a decode-b; do
  start $SWITCHYARD worker --port 0 --worker-id "$id" --disaggregation-mode decode --nats "$NATS_URL" "$@"
done
start $SWITCHYARD frontend --port "$HTTP_PORT" --nats "$NATS_URL" --router-mode kv --migration-limit 3 \
  --max-local-prefill-length "${MAX_LOCAL_PREFILL_LENGTH:-256}" ${FRONTEND_ARGS:-}
wait_any
