#!/usr/bin/env bash
# A real S3-compatible object store on 127.0.0.1 for the s3:// checkpoint tests: SeaweedFS
# (Apache-2.0; `weed mini`: master, volume server, filer and S3 gateway in one process), built
# from the Go module proxy. MinIO is not used: it is AGPL.
#
# Usage: scripts/seaweedfs.sh build|start|stop|status|env|logs
#   build   build `weed` into the cache unless it is there (about 10 min the first time).
#   start   build, start `weed mini` with bucket `vigil` and wait until S3 answers; prints the
#           endpoint. Does nothing but print it when it already runs.
#   stop    stop it (pid file; SIGTERM, then SIGKILL after 20 s). Keeps the data.
#   status  exit 0 only when S3 answers.
#   env     print the exports the tests and detectors read: VIGIL_S3_ENDPOINT and the AWS_*
#           variables of object_store (endpoint, region, HTTP allowed, a key pair).
#   logs    print the tail of the log.
#
# Environment:
#   VIGIL_CACHE           cache root (default ~/.cache/vigil)
#   VIGIL_S3_PORT         S3 port (default 18333; the other services use ports near it)
#   VIGIL_S3_TIMEOUT      seconds `start` waits for readiness (default 90)
set -euo pipefail

VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
# SeaweedFS publishes no semver tags to the module proxy; this pseudo-version is the one served.
VERSION="v0.0.0-20261109003541-7506e5f91cd6"
PORT="${VIGIL_S3_PORT:-18333}"
TIMEOUT="${VIGIL_S3_TIMEOUT:-90}"
HOME_DIR="$VIGIL_CACHE/seaweedfs"
BIN="$HOME_DIR/bin/weed-$VERSION"
RUN="$HOME_DIR/run"
PIDFILE="$RUN/weed.pid"
LOGFILE="$RUN/weed.log"
ENDPOINT="http://127.0.0.1:$PORT"

log() { printf '[seaweedfs %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
	if [[ -x "$BIN" ]]; then
		return 0
	fi
	command -v go >/dev/null || die "go is not installed"
	local started=$SECONDS src="$HOME_DIR/src"
	log "Building SeaweedFS $VERSION from the Go module proxy into $BIN"
	# `go install pkg@version` refuses modules with replace directives; build the module as the
	# main module instead.
	local dir
	dir=$(go mod download -json "github.com/seaweedfs/seaweedfs@$VERSION" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	[[ -n "$dir" ]] || die "go mod download found no module directory"
	mkdir -p "$HOME_DIR" "$(dirname "$BIN")"
	rm -rf "$src"
	cp -r "$dir" "$src" || die "copying the module source failed"
	chmod -R u+w "$src"
	(cd "$src" && go build -o "$BIN.tmp" ./weed) || die "go build failed"
	mv "$BIN.tmp" "$BIN"
	rm -rf "$src"
	log "Built in $((SECONDS - started)) s"
}

# The key pair `weed mini` creates its user with: requests are SigV4-signed and checked.
ACCESS_KEY=vigil
SECRET_KEY=vigil-test-secret

answers() {
	# Any HTTP answer from the gateway (an unsigned request is refused with 403 once the
	# bucket exists).
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' "$ENDPOINT/vigil" 2>/dev/null || true)
	[[ "$code" == 403 || "$code" == 200 ]]
}

running() {
	[[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
	if running && answers; then
		echo "$ENDPOINT"
		return 0
	fi
	build
	mkdir -p "$RUN/data"
	log "Starting weed mini (S3 on $ENDPOINT)"
	AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY nohup "$BIN" mini -dir="$RUN/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket=vigil \
		-s3.port="$PORT" -master.port=$((PORT + 1000)) -volume.port=$((PORT + 1100)) \
		-filer.port=$((PORT + 1200)) -webdav=false -admin.ui=false \
		>"$LOGFILE" 2>&1 &
	echo $! >"$PIDFILE"
	local started=$SECONDS
	until answers; do
		running || die "weed exited; see $LOGFILE"
		((SECONDS - started < TIMEOUT)) || die "S3 did not answer within $TIMEOUT s; see $LOGFILE"
		sleep 1
	done
	log "S3 is ready on $ENDPOINT after $((SECONDS - started)) s (pid $(cat "$PIDFILE"))"
	echo "$ENDPOINT"
}

stop() {
	running || return 0
	local pid
	pid=$(cat "$PIDFILE")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 20); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
		sleep 1
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$PIDFILE"
}

case "${1:-}" in
build) build ;;
start) start ;;
stop) stop ;;
status) running && answers ;;
env)
	cat <<EOF
export VIGIL_S3_ENDPOINT=$ENDPOINT
export AWS_ENDPOINT=$ENDPOINT
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
EOF
	;;
logs) tail -n 50 "$LOGFILE" ;;
*)
	echo "usage: $0 build|start|stop|status|env|logs" >&2
	exit 2
	;;
esac
