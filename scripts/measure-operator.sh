#!/usr/bin/env bash
# Measures vigil-operator on a real control plane (e2e/cluster.sh) with a real broker
# (scripts/kafka.sh):
#   1. CR change -> children applied latency, p50/p99 (operator/examples/bench.rs `latency`):
#      StreamPipeline spec change -> StatefulSet with the new pod template seen by a watch, and
#      DetectionRule change -> every selected pipeline's ConfigMap carries it.
#   2. Operator memory (RSS) with N StreamPipelines (`scale`, default 1000), all Ready.
# The operator is a release build run as the chart's ServiceAccount (token from
# `kubectl create token`), with leader election on, like in a cluster.
#
# Usage: scripts/measure-operator.sh [latency|scale|all]   (default all)
# Environment:
#   VIGIL_BENCH_PIPELINES   pipelines for `scale` (default 1000)
#   VIGIL_BENCH_CHANGES     timed changes of each kind for `latency` (default 200)
#   VIGIL_E2E_CLUSTER       cluster name (default "operator-bench")
#   VIGIL_E2E_NODES         kwok nodes (default pipelines/100 + 2; each takes 110 pods)
#   VIGIL_E2E_KEEP=1        leave the cluster running afterwards
# Prints the numbers on stdout; logs go to stderr and $OUT (default /tmp/vigil-measure-operator).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-all}"
export VIGIL_E2E_CLUSTER="${VIGIL_E2E_CLUSTER:-operator-bench}"
# kwok nodes take 110 pods each: one detector pod per pipeline needs N/100 nodes.
PIPELINES="${VIGIL_BENCH_PIPELINES:-1000}"
CHANGES="${VIGIL_BENCH_CHANGES:-200}"
export VIGIL_E2E_NODES="${VIGIL_E2E_NODES:-$((PIPELINES / 100 + 2))}"
OUT="${OUT:-/tmp/vigil-measure-operator}"
mkdir -p "$OUT"
log() { printf '[measure-operator %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

op_pid=""
cleanup() {
	local rc=$?
	if [[ -n "$op_pid" ]] && kill -0 "$op_pid" 2>/dev/null; then
		kill -TERM "$op_pid" 2>/dev/null || true
		wait "$op_pid" 2>/dev/null || true
	fi
	[[ "${VIGIL_E2E_KEEP:-0}" == 1 ]] || e2e/cluster.sh down >&2 || true
	exit "$rc"
}
trap cleanup EXIT

log "building the operator and the bench (release)"
cargo build --release -p vigil-operator --bin vigil-operator --example bench >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"

e2e/cluster.sh up >&2
eval "$(e2e/cluster.sh env)"
KAFKA_BOOTSTRAP="$(scripts/kafka.sh start | tail -n1)"
helm upgrade --install vigil charts/vigil --namespace vigil-system --create-namespace \
	--set operator.enabled=false --wait >&2

# The source topic has 4 partitions, so every pipeline's partition lookup succeeds (cached).
TOPIC="bench-source-$$"

# The operator as the chart's ServiceAccount.
TOKEN="$(kubectl -n vigil-system create token vigil-operator --duration=2h)"
SERVER="$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
CA="$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
cat >"$OUT/operator.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$SERVER", certificate-authority-data: "$CA"}}]
users: [{name: u, user: {token: "$TOKEN"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
KC
METRICS="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
KUBECONFIG="$OUT/operator.kubeconfig" RUST_LOG=info \
	"$TARGET/vigil-operator" --leader-elect=true --lease-namespace vigil-system \
	--kafka-bootstrap-servers "$KAFKA_BOOTSTRAP" --metrics-addr "$METRICS" >"$OUT/operator.log" 2>&1 &
op_pid=$!
for _ in $(seq 1 100); do curl -fs "http://$METRICS/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 1 200); do curl -fs "http://$METRICS/metrics" | grep -q '^vigil_operator_leader 1' && break; sleep 0.1; done
log "operator pid $op_pid, metrics http://$METRICS/metrics, log $OUT/operator.log"

BENCH="$TARGET/examples/bench"
"$BENCH" create-topic --topic "$TOPIC" --partitions 4 --bootstrap-servers "$KAFKA_BOOTSTRAP"
if [[ "$WHAT" == latency || "$WHAT" == all ]]; then
	log "latency: $CHANGES changes of each kind"
	"$BENCH" latency --topic "$TOPIC" --changes "$CHANGES"
fi
if [[ "$WHAT" == scale || "$WHAT" == all ]]; then
	log "scale: $PIPELINES StreamPipelines"
	"$BENCH" scale --topic "$TOPIC" --pipelines "$PIPELINES" --operator-pid "$op_pid"
fi
curl -fs "http://$METRICS/metrics" | grep -E '^vigil_operator_(reconcile_total|reconcile_errors_total|apply_duration_seconds_(sum|count))' || true
