# Shared by the launch recipes: start NATS when none answers, run children in the background,
# stop them all on Ctrl-C or when any of them exits.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWITCHYARD="node $ROOT/bin/switchyard.mjs"
NATS_URL=${SWITCHYARD_NATS_URL:-nats://127.0.0.1:4222}
HTTP_PORT=${HTTP_PORT:-8000}
pids=()
nats_pid=

# Switchyard processes first (workers deregister and drain while NATS is still up), NATS last.
stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$nats_pid" ]; then kill -TERM "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
}
trap stop_all INT TERM EXIT

nats_reachable() {
  local hostport=${NATS_URL#nats://}
  (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null
}

ensure_nats() {
  if nats_reachable; then
    echo "using NATS at $NATS_URL"
    return
  fi
  command -v nats-server >/dev/null || { echo "nats-server not found: apt-get install nats-server, or set SWITCHYARD_NATS_URL" >&2; exit 1; }
  local hostport=${NATS_URL#nats://}
  setsid nats-server -js -a "${hostport%:*}" -p "${hostport##*:}" -sd "$(mktemp -d)" >/dev/null 2>&1 &
  nats_pid=$!
  for _ in $(seq 50); do nats_reachable && break; sleep 0.1; done
  echo "started nats-server at $NATS_URL"
}

# Children run in their own session, so Ctrl-C reaches only this script, which then sends each
# of them one SIGTERM: a graceful drain, not the "second signal, exit now" path.
start() {
  setsid "$@" &
  pids+=($!)
}

wait_any() {
  echo "OpenAI API at http://127.0.0.1:$HTTP_PORT/v1 (Ctrl-C stops everything)"
  wait -n
}
