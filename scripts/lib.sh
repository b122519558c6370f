# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for scripts/infra-up and scripts/infra-down.
# Sourced, not executed. See docs/BROKER.md.

# --- Settings (all overridable from the environment) -------------------------

# Everything built or run by these scripts lives under the cache dir:
#   nisshi-<ver>/bin/nisshi   the broker binary (cargo install --root)
#   nisshi-target/            cargo's target dir, kept so a failed build resumes
#   nisshi-build.log          output of the last broker build
#   run/nisshi-<port>.{pid,log}  the running broker's pidfile and log
#   venv/                     Python venv with confluent-kafka (broker-smoke.py)
INTEREST_NOW_CACHE="${INTEREST_NOW_CACHE:-$HOME/.cache/interest-now}"
RUN_DIR="$INTEREST_NOW_CACHE/run"

NISSHI_VERSION="0.8.1"
# Built with the in-memory engine (the shared local broker) and the SQLite engine
# (brokers that must survive a restart, as in the broker fault test).
NISSHI_ROOT="$INTEREST_NOW_CACHE/nisshi-$NISSHI_VERSION-sqlite"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
NISSHI_TARGET_DIR="$INTEREST_NOW_CACHE/nisshi-target"
NISSHI_BUILD_LOG="$INTEREST_NOW_CACHE/nisshi-build.log"

PG_HOST="127.0.0.1"
PG_PORT="5432"
PG_USER="postgres"

KAFKA_HOST="127.0.0.1"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_PARTITIONS="${KAFKA_PARTITIONS:-12}"
KAFKA_TOPIC_PREFIX="${KAFKA_TOPIC_PREFIX:-}"
# How long an empty consumer group waits for more members before its first
# rebalance (Kafka's group.initial.rebalance.delay.ms). nisshi's and Kafka's
# default is 3s; 0s (as in most dev/test setups) lets each new group's first
# consumer get its partitions at once instead of after 3s.
KAFKA_GROUP_INITIAL_REBALANCE_DELAY="${KAFKA_GROUP_INITIAL_REBALANCE_DELAY:-0s}"

# The topics the service uses (KAFKA_TOPIC_PREFIX is prepended to each).
KAFKA_TOPICS=(balance-snapshots balance-snapshots.dlq interest-claims interest-payouts)

BROKER_URL="tcp://$KAFKA_HOST:$KAFKA_PORT"
BROKER_PIDFILE="$RUN_DIR/nisshi-$KAFKA_PORT.pid"
BROKER_LOG="$RUN_DIR/nisshi-$KAFKA_PORT.log"

# Bounded waits, in seconds.
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-20}"

# --- Helpers -----------------------------------------------------------------

# Progress goes to stderr, so that stdout carries only the final env lines.
log() { printf '[infra] %s\n' "$*" >&2; }
warn() { printf '[infra] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[infra] ERROR: %s\n' "$*" >&2
    exit 1
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# The pid in the broker pidfile, if that process is alive and is nisshi.
# Prints nothing (and returns 1) when there is no such process.
broker_pid() {
    local pid
    [[ -f "$BROKER_PIDFILE" ]] || return 1
    pid="$(cat "$BROKER_PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be our nisshi binary.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nisshi || return 1
    echo "$pid"
}

# Print the last lines of the broker log (used in failure messages).
broker_log_tail() {
    if [[ -f "$BROKER_LOG" ]]; then
        echo "----- last 40 lines of $BROKER_LOG -----" >&2
        tail -n 40 "$BROKER_LOG" >&2
        echo "-----------------------------------------" >&2
    fi
}

# Run the nisshi CLI from the run dir: nisshi loads a .env file from its
# working directory, and the repo's .env (if any) must not reconfigure it.
nisshi_cli() {
    (cd "$RUN_DIR" && "$NISSHI_BIN" "$@")
}
