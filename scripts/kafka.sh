#!/usr/bin/env bash
# One real Apache Kafka broker on 127.0.0.1 for Vigil's integration tests, benchmarks and demos:
# KRaft mode, a single process that is both broker and controller, no ZooKeeper, no containers.
#
# Listeners (PORT is VIGIL_KAFKA_PORT):
#   PORT     PLAINTEXT
#   PORT+1   CONTROLLER (KRaft, plaintext)
#   PORT+2   SSL, client certificate required (ssl.client.auth=required)
#   PORT+3   SASL_SSL with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (no client certificate)
# The TLS material (a CA, the broker's certificate for 127.0.0.1 and localhost, a client
# certificate; EC P-256) is generated with `openssl` into RUN/tls/ at the first start. The SASL
# user (PLAIN in the broker's JAAS config, SCRAM credentials added when the storage is
# formatted, or through the admin API for storage formatted by an older version of this script)
# is `vigil` with the password in RUN/tls/sasl-password.
#
# Usage: scripts/kafka.sh fetch|start|stop|status|env|logs|reset
#   fetch   download Kafka's jars from Maven Central (through `mvn`, into the cache) unless they
#           are there already.
#   start   fetch, format the storage once, start the broker and wait until it serves metadata
#           and can create a topic; print the bootstrap address on stdout. Does nothing but print
#           the address when the broker already runs.
#   stop    stop the broker (pid file; SIGTERM, then SIGKILL after 30 s). Keeps the data.
#   status  say whether the broker runs and answers; exit 0 only when it does.
#   env     print `export KAFKA_BOOTSTRAP=...` for eval "$(scripts/kafka.sh env)", with the TLS
#           listeners and material: KAFKA_TLS_BOOTSTRAP (SSL), KAFKA_SASL_SSL_BOOTSTRAP,
#           KAFKA_TLS_CA, KAFKA_TLS_CLIENT_CERT, KAFKA_TLS_CLIENT_KEY, KAFKA_SASL_USER,
#           KAFKA_SASL_PASSWORD.
#   logs    print the tail of the broker log.
#   reset   stop, then delete the broker's data (topics, offsets).
#
# Environment:
#   VIGIL_CACHE           cache root (default ~/.cache/vigil)
#   VIGIL_KAFKA_VERSION   Kafka version on Maven Central (default 4.1.1; needs Java 17+)
#   VIGIL_KAFKA_PORT      plaintext client listener port (default 19092; the controller uses
#                         PORT+1, SSL PORT+2, SASL_SSL PORT+3)
#   VIGIL_KAFKA_RUN_DIR   state directory (default $VIGIL_CACHE/kafka/<version>/run), e.g. for a
#                         second broker beside the first (with another VIGIL_KAFKA_PORT)
#   VIGIL_KAFKA_HEAP      JVM heap options (default "-Xms256m -Xmx768m")
#   VIGIL_KAFKA_TIMEOUT   seconds `start` waits for readiness (default 90)
#   VIGIL_KAFKA_PARTITIONS default partitions of auto-created topics (default 4)
# Jars:  $VIGIL_CACHE/kafka/<version>/libs/ (and the Maven repository $VIGIL_CACHE/m2)
# State: $VIGIL_CACHE/kafka/<version>/run/ (server.properties, data/, tls/, kafka.pid, kafka.log)
set -euo pipefail

VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
VERSION="${VIGIL_KAFKA_VERSION:-4.1.1}"
PORT="${VIGIL_KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
SSL_PORT=$((PORT + 2))
SASL_SSL_PORT=$((PORT + 3))
HEAP="${VIGIL_KAFKA_HEAP:--Xms256m -Xmx768m}"
TIMEOUT="${VIGIL_KAFKA_TIMEOUT:-90}"
PARTITIONS="${VIGIL_KAFKA_PARTITIONS:-4}"
# log4j 2 binding for Kafka's slf4j 1.7 API, the same jar Kafka's own distribution ships.
LOG4J_VERSION=2.24.3
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

HOME_DIR="$VIGIL_CACHE/kafka/$VERSION"
LIBS="$HOME_DIR/libs"
RUN="${VIGIL_KAFKA_RUN_DIR:-$HOME_DIR/run}"
DATA="$RUN/data"
PIDFILE="$RUN/kafka.pid"
LOGFILE="$RUN/kafka.log"
BOOTSTRAP="127.0.0.1:$PORT"
TLS_BOOTSTRAP="127.0.0.1:$SSL_PORT"
SASL_SSL_BOOTSTRAP="127.0.0.1:$SASL_SSL_PORT"
TLS="$RUN/tls"
SASL_USER=vigil
# Bump when the TLS material or the listener layout changes: `start` then writes them anew.
TLS_LAYOUT=1

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

# CA, broker and client certificates (EC P-256, 10 years) and the SASL password, once per run
# directory (again when TLS_LAYOUT changes).
tls_material() {
	if [[ "$(cat "$TLS/layout" 2>/dev/null)" == "$TLS_LAYOUT" ]]; then
		return 0
	fi
	command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl): it makes the test broker's TLS certificates"
	log "Generating the test CA, broker and client certificates in $TLS"
	rm -rf "$TLS.tmp"
	mkdir -p "$TLS.tmp"
	(
		set -e
		cd "$TLS.tmp"
		key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
		key ca.key
		openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Vigil test CA" \
			-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt
		# name, subject, extensions
		issue() {
			key "$1.key"
			openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
			printf '%s\n' "$3" >"$1.ext"
			openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
				-extfile "$1.ext" -out "$1.crt" 2>/dev/null
			rm -f "$1.csr" "$1.ext"
		}
		issue broker "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature"
		issue client "/CN=vigil-client" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
		# Kafka's PEM key store: the private key (PKCS#8, not encrypted), then the chain.
		cat broker.key broker.crt ca.crt >broker-keystore.pem
		head -c 18 /dev/urandom | base64 | tr '+/' '-_' >sasl-password
		chmod 600 ./*.key broker-keystore.pem sasl-password
		echo "$TLS_LAYOUT" >layout
	) || die "openssl failed to make the TLS material"
	rm -rf "$TLS"
	mv "$TLS.tmp" "$TLS"
	rm -f "$RUN/scram-users"
}

sasl_password() { cat "$TLS/sasl-password"; }

write_config() {
	mkdir -p "$DATA"
	# The file holds the SASL password.
	(umask 077 && : >"$RUN/server.properties")
	chmod 600 "$RUN/server.properties"
	cat >"$RUN/server.properties" <<EOF
# Written by scripts/kafka.sh: one KRaft node that is broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
# TLS (scripts/kafka.sh tls_material): PEM key store and trust store.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.crt
# The SSL listener requires a client certificate, so a test that connects there shows that the
# client presented one; SASL_SSL authenticates with SASL only.
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$(sasl_password)";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
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
	local pw
	pw="$(sasl_password)"
	# The SCRAM credentials go into the cluster metadata with the format.
	java -cp "$(classpath)" -Dlog4j2.configurationFile="$RUN/log4j2.properties" -Dvigil.kafka.log="$RUN/storage-tool.log" \
		kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$RUN/server.properties" \
		--add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$pw]" \
		--add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$pw]" >&2 ||
		die "kafka.tools.StorageTool format failed"
	echo "$TLS_LAYOUT" >"$RUN/scram-users"
}

# Storage formatted by a version of this script without SASL users (or before the TLS material
# was made anew) gets the SCRAM credentials through the admin API of the running broker.
scram_users() {
	[[ "$(cat "$RUN/scram-users" 2>/dev/null)" == "$TLS_LAYOUT" ]] && return 0
	local pw mechanism
	pw="$(sasl_password)"
	log "Adding the SCRAM-SHA-256/512 credentials of user $SASL_USER"
	# One mechanism per request (the broker refuses two changes of one user in a request). The
	# tool's output, which repeats the password on failure, goes to config-tool.log.
	for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
		java -cp "$(classpath)" -Dlog4j2.configurationFile="$RUN/log4j2.properties" -Dvigil.kafka.log="$RUN/config-tool.log" \
			kafka.admin.ConfigCommand --bootstrap-server "$BOOTSTRAP" --alter --entity-type users --entity-name "$SASL_USER" \
			--add-config "$mechanism=[password=$pw]" >>"$RUN/config-tool.log" 2>&1 ||
			die "kafka.admin.ConfigCommand could not add the $mechanism credentials (see $RUN/config-tool.log; the broker runs)"
	done
	echo "$TLS_LAYOUT" >"$RUN/scram-users"
}

# Whether the running broker was started with this script's listeners (an older version of the
# script started it without TLS).
has_tls_listeners() {
	grep -q "^listeners=.*SASL_SSL://127.0.0.1:$SASL_SSL_PORT" "$RUN/server.properties" 2>/dev/null &&
		[[ "$(cat "$TLS/layout" 2>/dev/null)" == "$TLS_LAYOUT" ]]
}

start() {
	local pid started=$SECONDS
	if pid="$(pid_alive)"; then
		api_versions_ok || log "warning: broker pid $pid runs but does not answer on $BOOTSTRAP yet"
		has_tls_listeners || log "warning: broker pid $pid was started without the TLS listeners (by an older scripts/kafka.sh); run \`scripts/kafka.sh stop && scripts/kafka.sh start\` to get them"
		printf '%s\n' "$BOOTSTRAP"
		return 0
	fi
	fetch
	local p
	for p in "$PORT" "$CONTROLLER_PORT" "$SSL_PORT" "$SASL_SSL_PORT"; do
		if port_open "$p"; then
			die "port $p (of $PORT..$SASL_SSL_PORT) is taken by another process; set VIGIL_KAFKA_PORT"
		fi
	done
	mkdir -p "$RUN"
	tls_material
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
	scram_users
	log "Kafka is ready on $BOOTSTRAP (SSL $TLS_BOOTSTRAP, SASL_SSL $SASL_SSL_BOOTSTRAP) after $((SECONDS - started)) s (pid $pid)"
	printf '%s\n' "$BOOTSTRAP"
}

print_env() {
	printf 'export KAFKA_BOOTSTRAP=%q\n' "$BOOTSTRAP"
	printf 'export KAFKA_TLS_BOOTSTRAP=%q\n' "$TLS_BOOTSTRAP"
	printf 'export KAFKA_SASL_SSL_BOOTSTRAP=%q\n' "$SASL_SSL_BOOTSTRAP"
	printf 'export KAFKA_TLS_CA=%q\n' "$TLS/ca.crt"
	printf 'export KAFKA_TLS_CLIENT_CERT=%q\n' "$TLS/client.crt"
	printf 'export KAFKA_TLS_CLIENT_KEY=%q\n' "$TLS/client.key"
	printf 'export KAFKA_SASL_USER=%q\n' "$SASL_USER"
	printf 'export KAFKA_PID_FILE=%q\n' "$PIDFILE"
	if [[ -f "$TLS/sasl-password" ]]; then
		printf 'export KAFKA_SASL_PASSWORD=%q\n' "$(sasl_password)"
	fi
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
			has_tls_listeners || echo "  (without the TLS listeners: started by an older scripts/kafka.sh)"
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
env) print_env ;;
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
