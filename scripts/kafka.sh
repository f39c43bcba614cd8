#!/usr/bin/env bash
# One real Apache Kafka broker on 127.0.0.1 for Vigil's integration tests, benchmarks and demos:
# KRaft mode, a single process that is both broker and controller, no ZooKeeper, no containers.
#
# Usage: scripts/kafka.sh fetch|start|stop|status|env|logs|reset
#   fetch   download Kafka's jars from Maven Central (through `mvn`, into the cache) unless they
#           are there already.
#   start   fetch, format the storage once, start the broker and wait until it serves metadata
#           and can create a topic; print the bootstrap address on stdout. Does nothing but print
#           the address when the broker already runs.
#   stop    stop the broker (pid file; SIGTERM, then SIGKILL after 30 s). Keeps the data.
#   status  say whether the broker runs and answers; exit 0 only when it does.
#   env     print `export KAFKA_BOOTSTRAP=...` for eval "$(scripts/kafka.sh env)".
#   logs    print the tail of the broker log.
#   reset   stop, then delete the broker's data (topics, offsets).
#
# Environment:
#   VIGIL_CACHE           cache root (default ~/.cache/vigil)
#   VIGIL_KAFKA_VERSION   Kafka version on Maven Central (default 4.1.1; needs Java 17+)
#   VIGIL_KAFKA_PORT      client listener port (default 19092; the controller uses PORT+1)
#   VIGIL_KAFKA_HEAP      JVM heap options (default "-Xms256m -Xmx768m")
#   VIGIL_KAFKA_TIMEOUT   seconds `start` waits for readiness (default 90)
#   VIGIL_KAFKA_PARTITIONS default partitions of auto-created topics (default 4)
# Jars:  $VIGIL_CACHE/kafka/<version>/libs/ (and the Maven repository $VIGIL_CACHE/m2)
# State: $VIGIL_CACHE/kafka/<version>/run/ (server.properties, data/, kafka.pid, kafka.log)
set -euo pipefail

VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
VERSION="${VIGIL_KAFKA_VERSION:-4.1.1}"
PORT="${VIGIL_KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
HEAP="${VIGIL_KAFKA_HEAP:--Xms256m -Xmx768m}"
TIMEOUT="${VIGIL_KAFKA_TIMEOUT:-90}"
PARTITIONS="${VIGIL_KAFKA_PARTITIONS:-4}"
# log4j 2 binding for Kafka's slf4j 1.7 API, the same jar Kafka's own distribution ships.
LOG4J_VERSION=2.24.3
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

HOME_DIR="$VIGIL_CACHE/kafka/$VERSION"
LIBS="$HOME_DIR/libs"
RUN="$HOME_DIR/run"
DATA="$RUN/data"
PIDFILE="$RUN/kafka.pid"
LOGFILE="$RUN/kafka.log"
BOOTSTRAP="127.0.0.1:$PORT"

log() { printf '[kafka %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

fetch() {
	if [[ -f "$LIBS/.complete" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn is not installed (apt-get install maven)"
	command -v java >/dev/null || die "java is not installed (Kafka $VERSION needs Java 17+)"
	local started=$SECONDS build="$HOME_DIR/build"
	log "Fetching Kafka $VERSION from Maven Central into $LIBS"
	mkdir -p "$build"
	# A throwaway project whose only purpose is to resolve the broker's runtime classpath.
	cat >"$build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.vigil</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
	rm -rf "$LIBS.tmp"
	(cd "$build" && mvn -q -B -Dmaven.repo.local="$VIGIL_CACHE/m2" \
		"$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp") ||
		die "mvn could not resolve org.apache.kafka:kafka_2.13:$VERSION"
	ls "$LIBS.tmp"/kafka_2.13-"$VERSION".jar >/dev/null || die "kafka_2.13-$VERSION.jar missing after mvn"
	touch "$LIBS.tmp/.complete"
	rm -rf "$LIBS"
	mv "$LIBS.tmp" "$LIBS"
	log "Fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started)) s"
}

# The pid in the pid file if that process is alive and is our Kafka JVM.
pid_alive() {
	local pid
	[[ -f "$PIDFILE" ]] || return 1
	read -r pid <"$PIDFILE"
	[[ -n "$pid" && -d "/proc/$pid" ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka $RUN/server.properties" || return 1
	printf '%s\n' "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ApiVersions v0 request (API key 18) over the client listener: the broker answers with
# error code 0 once its socket server accepts requests.
api_versions_ok() {
	local reply
	reply="$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
		# size=10, api_key=18, api_version=0, correlation_id=7, client_id=null (-1)
		printf '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff' >&3
		timeout 2 head -c 10 <&3 | od -An -tx1 | tr -d ' \n'
	)" || return 1
	# size(4) correlation_id=7 error_code=0
	[[ "${reply:8:12}" == "000000070000" ]]
}

classpath() { printf '%s' "$LIBS/*"; }

write_config() {
	mkdir -p "$DATA"
	cat >"$RUN/server.properties" <<EOF
# Written by scripts/kafka.sh: one KRaft node that is broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
num.partitions=$PARTITIONS
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start and stop consumer groups all the time: no delay before the first rebalance.
group.initial.rebalance.delay.ms=0
# Replays keep historical event times as message timestamps (NAB data is from 2013-2015), so
# retention is by size only: time-based retention would delete such segments at once.
log.segment.bytes=67108864
log.retention.ms=-1
log.retention.bytes=536870912
EOF
	cat >"$RUN/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:vigil.kafka.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.org.name = org.apache.kafka
logger.org.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

format_storage() {
	[[ -f "$DATA/meta.properties" ]] && return 0
	local cluster_id
	# A cluster id is 16 random bytes in URL-safe base64 without padding (Kafka's Uuid).
	cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
	log "Formatting storage in $DATA (cluster $cluster_id)"
	java -cp "$(classpath)" -Dlog4j2.configurationFile="$RUN/log4j2.properties" -Dvigil.kafka.log="$RUN/storage-tool.log" \
		kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$RUN/server.properties" >&2 ||
		die "kafka.tools.StorageTool format failed"
}

start() {
	local pid started=$SECONDS
	if pid="$(pid_alive)"; then
		api_versions_ok || log "warning: broker pid $pid runs but does not answer on $BOOTSTRAP yet"
		printf '%s\n' "$BOOTSTRAP"
		return 0
	fi
	fetch
	if port_open "$PORT" || port_open "$CONTROLLER_PORT"; then
		die "port $PORT or $CONTROLLER_PORT is taken by another process; set VIGIL_KAFKA_PORT"
	fi
	write_config
	format_storage
	log "Starting Kafka $VERSION on $BOOTSTRAP (log: $LOGFILE)"
	# shellcheck disable=SC2086 # HEAP holds several JVM options
	nohup java $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$RUN/log4j2.properties" -Dvigil.kafka.log="$LOGFILE" \
		-cp "$(classpath)" kafka.Kafka "$RUN/server.properties" >"$RUN/stdout.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$PIDFILE"
	local deadline=$((SECONDS + TIMEOUT))
	until api_versions_ok && grep -q 'Kafka Server started' "$LOGFILE" 2>/dev/null; do
		if [[ ! -d "/proc/$pid" ]]; then
			tail -n 30 "$RUN/stdout.log" "$LOGFILE" >&2 2>/dev/null || true
			die "the broker exited during startup (see $LOGFILE)"
		fi
		((SECONDS < deadline)) || { tail -n 30 "$LOGFILE" >&2 || true; die "the broker was not ready after $TIMEOUT s"; }
		sleep 0.2
	done
	log "Kafka is ready on $BOOTSTRAP after $((SECONDS - started)) s (pid $pid)"
	printf '%s\n' "$BOOTSTRAP"
}

stop() {
	local pid i
	if ! pid="$(pid_alive)"; then
		rm -f "$PIDFILE"
		log "Kafka is not running"
		return 0
	fi
	log "Stopping Kafka (pid $pid)"
	kill -TERM "$pid"
	for ((i = 0; i < 300; i++)); do
		[[ -d "/proc/$pid" ]] || break
		sleep 0.1
	done
	if [[ -d "/proc/$pid" ]]; then
		log "warning: no exit after 30 s, sending SIGKILL"
		kill -KILL "$pid" || true
	fi
	rm -f "$PIDFILE"
}

status() {
	local pid
	if pid="$(pid_alive)"; then
		if api_versions_ok; then
			echo "Kafka $VERSION runs (pid $pid) and answers on $BOOTSTRAP"
			return 0
		fi
		echo "Kafka $VERSION runs (pid $pid) but does not answer on $BOOTSTRAP"
		return 1
	fi
	echo "Kafka is not running"
	return 1
}

case "${1:-}" in
fetch) fetch ;;
start) start ;;
stop) stop ;;
status) status ;;
env) printf 'export KAFKA_BOOTSTRAP=%s\n' "$BOOTSTRAP" ;;
logs) tail -n "${2:-50}" "$LOGFILE" ;;
reset)
	stop
	rm -rf "$RUN"
	log "Deleted $RUN"
	;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
