#!/usr/bin/env bash
# Local infrastructure for complaint-desk: a single-node Kafka (KRaft) broker
# and a MongoDB-compatible server (SecantusDB), run as plain background
# processes — no Docker needed.
#
#   infra.sh up            install (cached), start both, wait until ready
#   infra.sh down          stop both (SIGTERM, then SIGKILL after 30 s)
#   infra.sh reset         stop both and delete their data (topics, databases, logs)
#   infra.sh status        running/stopped + PID for each; exit 3 if any stopped
#   infra.sh env           print KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI
#   infra.sh stop-kafka    stop only the broker (for broker-outage tests)
#   infra.sh start-kafka   start only the broker and wait until it is ready
#   infra.sh kafka-tool CLASS [ARGS...]
#                          run a Kafka CLI class from the cached jars, e.g.
#                          org.apache.kafka.tools.TopicCommand --list ...
#
# Versions come from deploy/versions.env. Environment knobs:
#   LOCAL_STATE_DIR              runtime state (default: <repo>/.local)
#   COMPLAINTS_CACHE_DIR         downloads that outlive a clone
#                                (default: ${XDG_CACHE_HOME:-~/.cache}/complaint-desk)
#   LOCAL_KAFKA_PORT             broker port            (default 9092)
#   LOCAL_KAFKA_CONTROLLER_PORT  KRaft controller port  (default 9093)
#   LOCAL_KAFKA_SASL_PORT        broker port asking for SASL PLAIN credentials
#                                (user "complaints"; default 9094), for the tests
#                                of the clients' SASL settings
#   LOCAL_KAFKA_SASL_PASSWORD    that user's password (default local-only-secret)
#   LOCAL_MONGO_PORT             SecantusDB port        (default 27017)
#   LOCAL_MONGO_CACHE_SIZE       SecantusDB's WiredTiger cache (default as mongod
#                                sizes its own: half of (RAM - 1 GB), at least 256M)
#   KAFKA_HEAP                   broker -Xmx            (default 768m)
#   KAFKA_DIST_DIR               unpacked official Kafka binary distribution
#                                (kafka_2.13-$KAFKA_VERSION) whose libs/ is used
#                                instead of fetching jars with Maven
#   SECANTUSDB_PYTHON            interpreter for SecantusDB's venv (python3.11)
#   KAFKA_READY_TIMEOUT / MONGO_READY_TIMEOUT   seconds (default 90 / 30)
#   INFRA_STOP_TIMEOUT           seconds before SIGKILL on stop (default 30)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../versions.env
source "$ROOT/deploy/versions.env"

STATE=${LOCAL_STATE_DIR:-$ROOT/.local}
CACHE=${COMPLAINTS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/complaint-desk}
KAFKA_PORT=${LOCAL_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${LOCAL_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${LOCAL_KAFKA_SASL_PORT:-9094}
KAFKA_SASL_USER=complaints
KAFKA_SASL_PASSWORD=${LOCAL_KAFKA_SASL_PASSWORD:-local-only-secret}
MONGO_PORT=${LOCAL_MONGO_PORT:-27017}
# mongod's own default for its WiredTiger cache: half of (RAM - 1 GB), at least 256 MB.
# A cache too small for what a run writes makes the server evict all the time: with 256M
# every write got dearer once ~3,000 complaints were stored (docs/local-infrastructure.md).
default_mongo_cache_size() {
    local total_kb
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || true)
    if [[ -z $total_kb ]]; then
        echo 1G
        return
    fi
    local mb=$(((total_kb / 1024 - 1024) / 2))
    ((mb < 256)) && mb=256
    echo "${mb}M"
}
MONGO_CACHE_SIZE=${LOCAL_MONGO_CACHE_SIZE:-$(default_mongo_cache_size)}
KAFKA_HEAP=${KAFKA_HEAP:-768m}
KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
MONGO_READY_TIMEOUT=${MONGO_READY_TIMEOUT:-30}
STOP_TIMEOUT=${INFRA_STOP_TIMEOUT:-30}
HOST=127.0.0.1

# Cache layout: one directory per version, so bumping versions.env never
# reuses stale jars and old versions can simply be deleted.
KAFKA_CACHE=$CACHE/kafka-$KAFKA_VERSION
SECANTUS_CACHE=$CACHE/secantusdb-$SECANTUSDB_VERSION
SECANTUS_VENV=$SECANTUS_CACHE/venv

# ---------------------------------------------------------------- helpers --

log() { printf '[infra] %s\n' "$*"; }
warn() { printf '[infra] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[infra] ERROR: %s\n' "$*" >&2
    exit 1
}

# Absolute paths, so PIDs' command lines and generated configs never depend
# on the caller's cwd.
resolve_dirs() {
    local v
    for v in KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_SASL_PORT MONGO_PORT KAFKA_READY_TIMEOUT MONGO_READY_TIMEOUT STOP_TIMEOUT; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
    done
    mkdir -p "$STATE" "$CACHE"
    STATE=$(cd "$STATE" && pwd)
    CACHE=$(cd "$CACHE" && pwd)
    KAFKA_CACHE=$CACHE/kafka-$KAFKA_VERSION
    SECANTUS_CACHE=$CACHE/secantusdb-$SECANTUSDB_VERSION
    SECANTUS_VENV=$SECANTUS_CACHE/venv
    KAFKA_DIR=$STATE/kafka
    MONGO_DIR=$STATE/mongo
    PIDS=$STATE/pids
    LOGS=$STATE/logs
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/config" "$MONGO_DIR/data" "$PIDS" "$LOGS"
}

# One `up`/`down`/... at a time per state dir: two concurrent `up`s would
# otherwise both see "not running" and start two servers. fd 9 must not leak
# into the servers (see launch_detached) or the lock would be held forever.
take_state_lock() {
    exec 9>"$STATE/infra.lock"
    flock -w 300 9 || die "timed out waiting for $STATE/infra.lock"
}

# Installs into the shared cache are serialised separately: several
# checkouts (state dirs) may share one cache.
with_cache_lock() {
    local name=$1
    shift
    (
        flock -w 600 8 || die "timed out waiting for cache lock $name"
        "$@"
    ) 8>"$CACHE/.$name.lock"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Deadlines in microseconds from bash's own clock (no date/awk forks).
now_us() { echo "${EPOCHREALTIME/./}"; }
deadline_in() { echo $(($(now_us) + $1 * 1000000)); }
before() { (($(now_us) < $1)); }

# kill -0 also succeeds for a zombie (exited, not yet reaped by init), which
# would make us wait forever for a process that is already gone.
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat=$(<"/proc/$1/stat") 2>/dev/null || return 1
    stat=${stat##*) } # fields after "(comm)"; the first is the state
    [[ ${stat%% *} != Z ]]
}

# pid_of NAME -> PID recorded in pids/NAME.pid (empty if none).
pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

# A recorded PID only counts if that process is alive AND is the server we
# started (PIDs get reused after reboots / long idle times).
process_matches() {
    local pid=$1 pattern=$2
    [[ -n $pid ]] && alive "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# Identifies our processes by a path unique to this state dir, so another
# checkout's servers are never mistaken for ours.
cmd_pattern() {
    case $1 in
    kafka) echo "$KAFKA_DIR/config/server.properties" ;;
    mongo) echo "$MONGO_DIR/secantusd.toml" ;;
    esac
}

is_running() { process_matches "$(pid_of "$1")" "$(cmd_pattern "$1")"; }

clean_stale_pid() {
    local name=$1 pid
    pid=$(pid_of "$name")
    if [[ -n $pid ]] && ! is_running "$name"; then
        log "$name: removing stale pid file (pid $pid is gone or not ours)"
        rm -f "$PIDS/$name.pid"
    fi
}

# launch_detached NAME LOGFILE CMD... : start CMD in its own session (immune
# to the caller's Ctrl-C / terminal hangup), recording its PID. The inner
# bash writes its own PID and then execs CMD, so the PID file is exact.
launch_detached() {
    local name=$1 logfile=$2
    shift 2
    rm -f "$PIDS/$name.pid"
    # shellcheck disable=SC2016 # $$, $0 and $@ belong to the inner bash
    setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
        "$PIDS/$name.pid" "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    local deadline
    deadline=$(deadline_in 5)
    while [[ ! -s $PIDS/$name.pid ]]; do
        before "$deadline" || die "$name did not record its PID"
        sleep 0.05
    done
}

stop_service() {
    local name=$1 pid
    pid=$(pid_of "$name")
    if [[ -z $pid ]]; then
        log "$name: not running"
        return 0
    fi
    if ! is_running "$name"; then
        clean_stale_pid "$name"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline
    deadline=$(deadline_in "$STOP_TIMEOUT")
    while alive "$pid" && before "$deadline"; do sleep 0.2; done
    if alive "$pid"; then
        warn "$name: still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$PIDS/$name.pid"
    log "$name: stopped"
}

# Every launch appends this marker to the service's logs, so a failure
# report shows only what the current attempt wrote.
LAUNCH_MARKER='===== infra.sh launch'

mark_logs() {
    local f
    for f in "$@"; do
        printf '%s %s =====\n' "$LAUNCH_MARKER" "$(date -u +%FT%TZ)" >>"$f"
    done
}

# Prints the current attempt's log tail and exits. A dead process's PID file
# is removed; a live-but-unready one is left for `down` to stop.
fail_with_log() {
    local name=$1 f
    shift
    warn "$name did not become ready; log since this start:"
    for f in "$@"; do
        [[ -s $f ]] || continue
        awk -v m="$LAUNCH_MARKER" -v f="$f" '
            index($0, m) == 1 { n = 0; next }
            { buf[++n] = $0 }
            END {
                if (n) printf "----- %s -----\n", f
                for (i = (n > 40 ? n - 39 : 1); i <= n; i++) print buf[i]
            }' "$f" >&2
    done
    if is_running "$name"; then
        die "$name is still running as pid $(pid_of "$name") but not ready; '$0 down' stops it"
    fi
    rm -f "$PIDS/$name.pid"
    die "$name failed to start"
}

# ------------------------------------------------------------------ kafka --

# What the broker needs at runtime. kafka_2.13 already pulls kafka-server,
# -metadata, -raft, -storage, the group/transaction/share coordinators,
# -coordinator-common, -clients and log4j-core; we add kafka-tools for the
# topic/console CLI classes (without connect-runtime, which only Kafka
# Connect needs) and pin the log4j2 trio plus the slf4j 1.x binding, because
# Kafka logs through slf4j-api 1.7.x and needs exactly one binding.
write_kafka_pom() {
    cat >"$KAFKA_CACHE/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/local/infra.sh; only used to fetch jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.complaint-desk</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Runs under the cache lock. Jars land in libs.tmp first and are renamed
# only after Maven succeeded, so an interrupted download is never used.
fetch_kafka_jars() {
    [[ -f $KAFKA_CACHE/.complete ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch Kafka jars; or set KAFKA_DIST_DIR)"
    log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)"
    mkdir -p "$KAFKA_CACHE"
    write_kafka_pom
    rm -rf "$KAFKA_CACHE/libs.tmp" "$KAFKA_CACHE/libs"
    # Uses the normal ~/.m2 settings/repository, so mirrors configured there
    # apply and a developer's existing downloads are reused.
    if ! mvn -B -Dstyle.color=never -f "$KAFKA_CACHE/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_CACHE/libs.tmp" \
        >"$KAFKA_CACHE/maven.log" 2>&1; then
        tail -n 30 "$KAFKA_CACHE/maven.log" >&2
        die "Maven could not fetch Kafka $KAFKA_VERSION (full log: $KAFKA_CACHE/maven.log)"
    fi
    check_slf4j_binding "$KAFKA_CACHE/libs.tmp"
    mv "$KAFKA_CACHE/libs.tmp" "$KAFKA_CACHE/libs"
    date -u +%FT%TZ >"$KAFKA_CACHE/.complete"
}

# slf4j 1.x finds log4j-slf4j-impl; slf4j 2.x would need log4j-slf4j2-impl.
# Fail loudly on a version bump that changes this instead of logging nothing.
check_slf4j_binding() {
    local libs=$1
    if compgen -G "$libs/slf4j-api-2.*.jar" >/dev/null; then
        die "Kafka $KAFKA_VERSION uses slf4j 2.x: switch log4j-slf4j-impl to log4j-slf4j2-impl in write_kafka_pom"
    fi
    compgen -G "$libs/kafka-tools-[0-9]*.jar" >/dev/null || die "kafka-tools jar missing from $libs"
}

# Sets KAFKA_LIBS. KAFKA_DIST_DIR lets people who already downloaded the
# official binary tarball (kafka_2.13-$KAFKA_VERSION.tgz) skip Maven: its
# libs/ holds the same jars.
ensure_kafka_jars() {
    if [[ -n ${KAFKA_DIST_DIR:-} ]]; then
        KAFKA_LIBS=$(cd "$KAFKA_DIST_DIR/libs" 2>/dev/null && pwd) || die "KAFKA_DIST_DIR has no libs/"
        [[ -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] ||
            die "KAFKA_DIST_DIR is not Kafka $KAFKA_VERSION (no kafka_2.13-$KAFKA_VERSION.jar)"
        return 0
    fi
    KAFKA_LIBS=$KAFKA_CACHE/libs
    [[ -f $KAFKA_CACHE/.complete ]] || with_cache_lock "kafka-$KAFKA_VERSION" fetch_kafka_jars
}

require_java17() {
    command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    local major
    major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ { print $2 }')
    ((${major%%.*} >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+, found $major"
}

# JVMs for short-lived CLI tools: small heap, C1 only — they start faster.
kafka_tool() {
    java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        -Dlog4j2.configurationFile="$KAFKA_DIR/config/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

write_kafka_tools_config() {
    cat >"$KAFKA_DIR/config/tools-log4j2.properties" <<'EOF'
# Generated by deploy/local/infra.sh. CLI tools: warnings to stderr only.
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF

    # Short timeouts so a readiness probe against a half-started broker
    # fails fast and is retried, instead of hanging for the 60 s default.
    cat >"$KAFKA_DIR/config/probe-admin.properties" <<'EOF'
request.timeout.ms=3000
default.api.timeout.ms=5000
EOF
}

# Rewritten on every start so port/heap changes apply; topics and offsets
# live in data/, which is untouched.
write_kafka_config() {
    cat >"$KAFKA_DIR/config/server.properties" <<EOF
# Generated by deploy/local/infra.sh — edits are overwritten on start.
# Single KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT

# A second door asking for credentials (SASL PLAIN), as a managed cluster does: the
# tests of the clients' KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* settings use it.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
log.dirs=$KAFKA_DIR/data

# Topics are created explicitly by the app/tests, never by a typo'd producer.
auto.create.topics.enable=false
num.partitions=3
default.replication.factor=1
min.insync.replicas=1

# Internal topics: one replica, and fewer partitions than the production
# defaults (50) so the first consumer group / transaction starts quickly.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Consumers join immediately instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0

# A dev box: keep a day of data, at most 256 MiB per partition.
log.retention.hours=24
log.retention.bytes=268435456
log.segment.bytes=67108864
log.retention.check.interval.ms=300000

# Two cores: no need for the default thread pools.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF

    cat >"$KAFKA_DIR/config/log4j2.properties" <<EOF
# Generated by deploy/local/infra.sh. Broker log: INFO to logs/kafka.log.
status = warn
# Kafka still logs while shutting down; log4j's own shutdown hook would
# close the file first and print "Unable to register Log4j shutdown hook".
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $LOGS/kafka.log
appender.file.filePattern = $LOGS/kafka.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Per-request logging is DEBUG/TRACE noise for local use.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel\$
logger.requestchannel.level = WARN
EOF
    write_kafka_tools_config
}

# The cluster id is generated once and kept, so the data dir stays valid.
# Same format as Kafka's Uuid: 16 random bytes, URL-safe base64, no padding,
# not starting with '-' (it would look like a CLI flag).
kafka_cluster_id() {
    local f=$KAFKA_DIR/cluster-id id
    if [[ ! -s $f ]]; then
        while :; do
            id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
            [[ $id != -* ]] && break
        done
        echo "$id" >"$f"
    fi
    cat "$f"
}

# Format only a fresh data dir: formatting again would wipe topics/offsets.
# --standalone writes the initial single-voter set for the dynamic quorum
# (controller.quorum.bootstrap.servers); that set includes the controller
# port, so the port cannot change afterwards without a fresh data dir.
format_kafka_storage() {
    local portfile=$KAFKA_DIR/controller-port
    if [[ -f $KAFKA_DIR/data/meta.properties ]]; then
        if [[ -f $portfile && $(cat "$portfile") != "$KAFKA_CONTROLLER_PORT" ]]; then
            die "Kafka data in $KAFKA_DIR/data was formatted for controller port $(cat "$portfile"), not $KAFKA_CONTROLLER_PORT; run 'infra.sh down' and delete $KAFKA_DIR to start fresh"
        fi
        return 0
    fi
    log "kafka: formatting storage (first start)"
    mark_logs "$LOGS/kafka-format.log"
    kafka_tool kafka.tools.StorageTool format --standalone \
        -t "$(kafka_cluster_id)" -c "$KAFKA_DIR/config/server.properties" >>"$LOGS/kafka-format.log" 2>&1 ||
        fail_with_log kafka "$LOGS/kafka-format.log"
    echo "$KAFKA_CONTROLLER_PORT" >"$portfile"
}

launch_kafka() {
    # A foreign process on our port would make readiness checks lie.
    local port
    for port in "$KAFKA_PORT" "$KAFKA_SASL_PORT"; do
        if port_open "$port"; then
            die "port $port is already in use by a process this script did not start"
        fi
    done
    write_kafka_config
    format_kafka_storage
    log "kafka: starting $KAFKA_VERSION on $HOST:$KAFKA_PORT"
    mark_logs "$LOGS/kafka.log" "$LOGS/kafka.console.log"
    (
        cd "$KAFKA_DIR"
        launch_detached kafka "$LOGS/kafka.console.log" \
            java -Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" \
            -Dkafka.logs.dir="$LOGS" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/config/server.properties"
    )
}

# Ready = the broker answers a metadata request (listing topics), not just
# an open port. The cheap TCP check gates the JVM-based probe.
kafka_answers_metadata() {
    port_open "$KAFKA_PORT" || return 1
    # Backgrounded + `wait` so a wedged JVM is killed after 30 s.
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
        --command-config "$KAFKA_DIR/config/probe-admin.properties" --list >/dev/null 2>&1 &
    local probe=$! deadline
    deadline=$(deadline_in 30)
    while alive "$probe" && before "$deadline"; do sleep 0.1; done
    alive "$probe" && kill -KILL "$probe" 2>/dev/null
    wait "$probe"
}

wait_kafka_ready() {
    local deadline
    deadline=$(deadline_in "$KAFKA_READY_TIMEOUT")
    until kafka_answers_metadata; do
        is_running kafka || fail_with_log kafka "$LOGS/kafka.log" "$LOGS/kafka.console.log"
        before "$deadline" || fail_with_log kafka "$LOGS/kafka.log" "$LOGS/kafka.console.log"
        sleep 0.5
    done
}

# Starts the broker unless ours is already running; does not wait.
start_kafka_process() {
    ensure_kafka_jars
    if is_running kafka; then
        log "kafka: already running (pid $(pid_of kafka))"
        return 0
    fi
    clean_stale_pid kafka
    launch_kafka
}

# ------------------------------------------------------------------ mongo --

# Runs under the cache lock. SecantusDB is GPL: it gets its own venv in the
# cache and is never installed into the application's environment.
# The stamp alone is not enough: the venv's python is a symlink to the
# interpreter it was made with, which a pyenv/OS upgrade can remove.
secantusdb_installed() {
    [[ -f $SECANTUS_CACHE/.complete && -x $SECANTUS_VENV/bin/python && -x $SECANTUS_VENV/bin/secantusd-py ]]
}

install_secantusdb() {
    secantusdb_installed && return 0
    local py=${SECANTUSDB_PYTHON:-python3.11}
    command -v "$py" >/dev/null || die "$py not found (needed for SecantusDB's venv)"
    log "mongo: installing SecantusDB $SECANTUSDB_VERSION into $SECANTUS_VENV (first run only)"
    rm -rf "$SECANTUS_VENV" "$SECANTUS_CACHE/.complete"
    mkdir -p "$SECANTUS_CACHE"
    "$py" -m venv "$SECANTUS_VENV"
    "$SECANTUS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "SecantusDB==$SECANTUSDB_VERSION" || die "pip could not install SecantusDB==$SECANTUSDB_VERSION"
    # The readiness probe relies on pymongo, which SecantusDB depends on.
    "$SECANTUS_VENV/bin/python" -c 'import pymongo' || die "SecantusDB venv has no pymongo"
    [[ -x $SECANTUS_VENV/bin/secantusd-py ]] || die "SecantusDB venv has no secantusd-py"
    date -u +%FT%TZ >"$SECANTUS_CACHE/.complete"
}

ensure_secantusdb() {
    secantusdb_installed || with_cache_lock "secantusdb-$SECANTUSDB_VERSION" install_secantusdb
}

# An explicit --config disables SecantusDB's auto-discovery of
# ./secantusd.toml and ~/.secantus/secantusd.toml, so a developer's personal
# config (e.g. auth = true) cannot change how the local server behaves.
write_mongo_config() {
    cat >"$MONGO_DIR/secantusd.toml" <<EOF
# Generated by deploy/local/infra.sh — edits are overwritten on start.
[server]
host = "$HOST"
port = $MONGO_PORT
storage_path = "$MONGO_DIR/data"
log_level = "INFO"
# No replica-set advertisement, so no oplog: nothing here uses change streams or
# transactions, and the oplog entry of every write cost the server ~5% of its CPU.
standalone = true

[storage]
# WiredTiger cache (LOCAL_MONGO_CACHE_SIZE; by default sized as mongod sizes its own).
cache_size = "$MONGO_CACHE_SIZE"
EOF
}

launch_mongo() {
    if port_open "$MONGO_PORT"; then
        die "port $MONGO_PORT is already in use by a process this script did not start"
    fi
    write_mongo_config
    log "mongo: starting SecantusDB $SECANTUSDB_VERSION on $HOST:$MONGO_PORT"
    mark_logs "$LOGS/mongo.log"
    (
        cd "$MONGO_DIR"
        launch_detached mongo "$LOGS/mongo.log" \
            "$SECANTUS_VENV/bin/secantusd-py" --config "$MONGO_DIR/secantusd.toml" \
            --host "$HOST" --port "$MONGO_PORT" --storage-path "$MONGO_DIR/data" --log-level INFO
    )
}

# Ready = the server answers `ping`. One Python process polls every 0.5 s
# and gives up early if the server process died.
wait_mongo_ready() {
    local pid
    pid=$(pid_of mongo)
    "$SECANTUS_VENV/bin/python" - "$MONGO_PORT" "$pid" "$MONGO_READY_TIMEOUT" <<'EOF' ||
import os, sys, time
import pymongo

port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(2)
    client = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true",
        serverSelectionTimeoutMS=500, connectTimeoutMS=500,
    )
    try:
        client.admin.command("ping")
        sys.exit(0)
    except pymongo.errors.PyMongoError:
        time.sleep(0.5)
    finally:
        client.close()
sys.exit(1)
EOF
        fail_with_log mongo "$LOGS/mongo.log"
}

start_mongo_process() {
    ensure_secantusdb
    if is_running mongo; then
        log "mongo: already running (pid $(pid_of mongo))"
        return 0
    fi
    clean_stale_pid mongo
    launch_mongo
}

# --------------------------------------------------------------- commands --

write_env_file() {
    # retryWrites=false: SecantusDB's retryable-write bookkeeping costs 10-25 ms per
    # single-document write and grows with use (docs/mongodb-compatibility.md); one local node
    # has no failover for a retry to survive anyway. Real MongoDB keeps the driver's default.
    cat >"$STATE/infra.env" <<EOF
KAFKA_BOOTSTRAP_SERVERS=$HOST:$KAFKA_PORT
MONGODB_URI=mongodb://$HOST:$MONGO_PORT/?retryWrites=false
EOF
    # The SASL listener only when the running broker has one (one started by an older
    # version of this script has not, until it is restarted).
    if grep -q "SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT" "$KAFKA_DIR/config/server.properties" 2>/dev/null; then
        cat >>"$STATE/infra.env" <<EOF
LOCAL_KAFKA_SASL_BOOTSTRAP_SERVERS=$HOST:$KAFKA_SASL_PORT
LOCAL_KAFKA_SASL_USERNAME=$KAFKA_SASL_USER
LOCAL_KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD
EOF
    fi
}

cmd_up() {
    take_state_lock
    require_java17
    # First run: Maven and pip downloads overlap instead of running in turn.
    local pip_job
    ensure_secantusdb &
    pip_job=$!
    ensure_kafka_jars
    wait "$pip_job" || die "SecantusDB installation failed"

    # Launch both, then wait for both: their start-up times overlap.
    start_mongo_process
    start_kafka_process
    # Even an "already running" server must answer before we report success.
    wait_mongo_ready
    log "mongo: ready on $HOST:$MONGO_PORT (pid $(pid_of mongo))"
    wait_kafka_ready
    log "kafka: ready on $HOST:$KAFKA_PORT (pid $(pid_of kafka))"

    write_env_file
    log "up. Kafka: $HOST:$KAFKA_PORT  MongoDB: mongodb://$HOST:$MONGO_PORT"
    log "env: $STATE/infra.env (or: $0 env)"
}

cmd_down() {
    take_state_lock
    # Both shut down concurrently; each waits for its own PID.
    stop_service kafka &
    local kafka_job=$!
    stop_service mongo
    wait "$kafka_job"
}

cmd_reset() {
    cmd_down
    # Data only: the downloaded jars and SecantusDB's venv stay in the cache.
    rm -rf "$KAFKA_DIR" "$MONGO_DIR" "$LOGS" "$STATE/infra.env"
    log "reset: Kafka and SecantusDB data deleted; '$0 up' starts them empty"
}

cmd_start_kafka() {
    take_state_lock
    require_java17
    start_kafka_process
    wait_kafka_ready
    log "kafka: ready on $HOST:$KAFKA_PORT (pid $(pid_of kafka))"
}

cmd_stop_kafka() {
    take_state_lock
    stop_service kafka
}

cmd_status() {
    local name pid rc=0
    local -A addr=([kafka]="$HOST:$KAFKA_PORT" [mongo]="mongodb://$HOST:$MONGO_PORT")
    for name in kafka mongo; do
        pid=$(pid_of "$name")
        if is_running "$name"; then
            printf '%-6s running  pid %-8s %s\n' "$name" "$pid" "${addr[$name]}"
        elif [[ -n $pid ]]; then
            printf '%-6s stopped  (stale pid file: %s)\n' "$name" "$pid"
            rc=3
        else
            printf '%-6s stopped\n' "$name"
            rc=3
        fi
    done
    return "$rc"
}

cmd_env() {
    [[ -f $STATE/infra.env ]] || die "no $STATE/infra.env yet; run '$0 up' first"
    cat "$STATE/infra.env"
}

cmd_kafka_tool() {
    (($#)) || die "usage: $0 kafka-tool CLASS [ARGS...]"
    ensure_kafka_jars
    write_kafka_tools_config
    kafka_tool "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

main() {
    local verb=${1:-}
    (($#)) && shift
    case $verb in
    up | down | reset | status | env | start-kafka | stop-kafka | kafka-tool) ;;
    -h | --help | help | "")
        usage
        [[ -n $verb ]]
        return
        ;;
    *)
        usage >&2
        die "unknown command: $verb"
        ;;
    esac
    resolve_dirs
    case $verb in
    up) cmd_up ;;
    down) cmd_down ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    env) cmd_env ;;
    start-kafka) cmd_start_kafka ;;
    stop-kafka) cmd_stop_kafka ;;
    kafka-tool) cmd_kafka_tool "$@" ;;
    esac
}

main "$@"
