#!/usr/bin/env bash
# Runs the three services locally as background uvicorn processes.
#
#   services.sh up      start intake (8001), routing (8002), followup (8003),
#                       webhooks (8004, development mode: http and loopback targets),
#                       seed the demo organisation if absent, wait for /readyz
#   services.sh down    stop exactly the processes recorded in .local/pids
#   services.sh status  running/stopped per service
#   services.sh exec CMD...
#                       run CMD with the local stack's environment (make token, make dlq)
#
# The services verify tokens with JWT_SECRET; when it is not set, with the local stack's
# own, generated on first use into .local/jwt-secret (there is no default secret).
# Needs the app's virtualenv (make install) and the local infrastructure
# (deploy/local/infra.sh up); KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI override.
# SERVICES_READY_TIMEOUT (seconds, default 600) bounds the wait for each service's
# /readyz: intake's start-up repairs take minutes on a large database (docs/intake.md).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${LOCAL_STATE_DIR:-$ROOT/.local}
PIDS=$STATE/pids
LOGS=$STATE/logs
VENV=${VENV:-$ROOT/.venv}
READY_TIMEOUT_S=${SERVICES_READY_TIMEOUT:-600}
SERVICES=("intake:8001" "routing:8002" "followup:8003" "webhooks:8004")

log() { printf '[services] %s\n' "$*"; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

is_running() {
    local pid
    pid=$(pid_of "$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && grep -q "$1.main:create_app" "/proc/$pid/cmdline" 2>/dev/null
}

load_infra_env() {
    # Explicit environment wins over what infra.sh recorded.
    local kafka=${KAFKA_BOOTSTRAP_SERVERS:-} mongo=${MONGODB_URI:-}
    if [[ -f $STATE/infra.env ]]; then
        set -a
        # shellcheck source=/dev/null
        source "$STATE/infra.env"
        set +a
    fi
    export KAFKA_BOOTSTRAP_SERVERS=${kafka:-${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}}
    export MONGODB_URI=${mongo:-${MONGODB_URI:-mongodb://127.0.0.1:27017/?retryWrites=false}}
    if [[ -z ${JWT_SECRET:-} ]]; then
        if [[ ! -s $STATE/jwt-secret ]]; then
            mkdir -p "$STATE"
            (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' \
                >"$STATE/jwt-secret")
        fi
        JWT_SECRET=$(<"$STATE/jwt-secret")
        export JWT_SECRET
    fi
}

# Extra environment of one service. Locally, webhooks runs in development mode so a
# receiver on this machine (http://127.0.0.1:...) can be subscribed.
service_env() {
    if [[ $1 == webhooks ]]; then
        printf '%s\n' "DEPLOYMENT_ENVIRONMENT=${DEPLOYMENT_ENVIRONMENT:-development}" \
            "ALLOW_LOOPBACK_TARGETS=${ALLOW_LOOPBACK_TARGETS:-true}"
    fi
}

start_service() {
    local name=$1 port=$2
    local -a extra_env
    mapfile -t extra_env < <(service_env "$name")
    if is_running "$name"; then
        log "$name already running (pid $(pid_of "$name"))"
        return
    fi
    rm -f "$PIDS/$name.pid"
    setsid env "${extra_env[@]}" "$VENV/bin/uvicorn" "$name.main:create_app" --factory \
        --host "${SERVICE_HOST:-127.0.0.1}" --port "$port" \
        --workers "${UVICORN_WORKERS:-1}" --no-access-log \
        >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
    log "$name started (pid $!, log $LOGS/$name.log)"
}

wait_ready() {
    local name=$1 port=$2 deadline=$((SECONDS + READY_TIMEOUT_S)) next_note=$((SECONDS + 30))
    local log_file=$LOGS/$name.log
    until "$VENV/bin/python" - "$port" <<'PY' 2>/dev/null; do
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)
PY
        if ! is_running "$name"; then
            tail -n 30 "$log_file" >&2
            die "$name exited during start-up (log: $log_file)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$log_file" >&2
            die "$name not ready on port $port after ${READY_TIMEOUT_S}s (SERVICES_READY_TIMEOUT; log: $log_file); it keeps starting: 'make up' again waits anew, 'make down' stops it"
        fi
        if ((SECONDS >= next_note)); then
            log "still waiting for $name's /readyz ($((deadline - SECONDS))s left; log: $log_file)"
            next_note=$((SECONDS + 30))
        fi
        sleep 0.5
    done
    log "$name ready on http://127.0.0.1:$port"
}

cmd_up() {
    [[ -x $VENV/bin/uvicorn ]] || die "no virtualenv at $VENV; run 'make install' first"
    mkdir -p "$PIDS" "$LOGS"
    load_infra_env
    "$VENV/bin/python" -m routing.demo
    local entry
    for entry in "${SERVICES[@]}"; do start_service "${entry%%:*}" "${entry##*:}"; done
    for entry in "${SERVICES[@]}"; do wait_ready "${entry%%:*}" "${entry##*:}"; done
}

cmd_down() {
    local entry name pid
    for entry in "${SERVICES[@]}"; do
        name=${entry%%:*}
        pid=$(pid_of "$name")
        if is_running "$name"; then
            # uvicorn drains in-flight requests and runs the lifespan shutdown on SIGTERM.
            kill -TERM "$pid"
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            log "$name stopped"
        fi
        rm -f "$PIDS/$name.pid"
    done
}

cmd_status() {
    local entry name
    for entry in "${SERVICES[@]}"; do
        name=${entry%%:*}
        if is_running "$name"; then log "$name running (pid $(pid_of "$name"))"; else log "$name stopped"; fi
    done
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
exec)
    shift
    load_infra_env
    exec "$@"
    ;;
*) die "usage: $0 up|down|status|exec CMD..." ;;
esac
