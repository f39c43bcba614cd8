#!/usr/bin/env bash
# The operator's end-to-end tests: a real control plane (e2e/cluster.sh), the chart installed
# with helm (operator Deployment disabled: no images can run here), a real Kafka broker
# (scripts/kafka.sh), then `cargo test -p vigil-operator --test e2e -- --ignored`, which runs
# vigil-operator as a local process with the chart's ServiceAccount token, `vigil run` for each
# detector pod it creates and `vigil-model-server` (after the init container's fetch script) for
# a model-server pod, with the rendered commands (NAB data from $VIGIL_NAB_DATA, default the
# repository's data/nab; ONNX Runtime from $ORT_DYLIB_PATH).
#
# Usage: e2e/tests/operator.sh [cargo test filter and args...]
# Environment:
#   VIGIL_E2E_CLUSTER   cluster name (default "operator"), see e2e/cluster.sh
#   VIGIL_E2E_KEEP=1    leave the cluster (and a broker this script started) running
#   VIGIL_E2E_THREADS   parallel tests (default 2)
#   CARGO_TARGET_DIR    as usual
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export VIGIL_E2E_CLUSTER="${VIGIL_E2E_CLUSTER:-operator}"
RELEASE_NS=vigil-system
log() { printf '[operator-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

started_kafka=0
started_s3=0
cleanup() {
	local rc=$?
	if ((rc != 0)); then
		e2e/cluster.sh logs >&2 || true
	fi
	if [[ "${VIGIL_E2E_KEEP:-0}" != 1 ]]; then
		e2e/cluster.sh down >&2 || true
		((started_kafka)) && scripts/kafka.sh stop >&2 || true
		((started_s3)) && scripts/seaweedfs.sh stop >&2 || true
	fi
	exit "$rc"
}
trap cleanup EXIT

start=$SECONDS
# Build the tests while the cluster and broker start.
# `cargo test --workspace` builds the e2e test and the binaries it runs (vigil,
# vigil-model-server) with one feature set: after scripts/test.sh's own test run nothing is
# rebuilt (per-package builds resolve features differently and would recompile dozens of crates).
log "building the e2e tests and the binaries they run (vigil, vigil-model-server)"
(cargo test --workspace --no-run) >&2 2>&1 &
build=$!

# The model-server test runs the real binary: ONNX Runtime from the PyPI wheel.
if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
	eval "$(scripts/setup-onnxruntime.sh)"
fi
e2e/cluster.sh up >&2
eval "$(e2e/cluster.sh env)"
if ! scripts/kafka.sh status >/dev/null 2>&1; then
	started_kafka=1
fi
KAFKA_BOOTSTRAP="$(scripts/kafka.sh start | tail -n1)"
export KAFKA_BOOTSTRAP
log "Kafka at $KAFKA_BOOTSTRAP"
# The savepoint test's detectors checkpoint to a real S3-compatible store.
if ! scripts/seaweedfs.sh status >/dev/null 2>&1; then
	started_s3=1
fi
scripts/seaweedfs.sh start >/dev/null
eval "$(scripts/seaweedfs.sh env)"
log "S3 at $VIGIL_S3_ENDPOINT"

log "packaging checks: chart CRDs and install manifest in sync, helm lint"
manifests/install/generate.sh --check
helm lint charts/vigil --strict
helm lint charts/vigil --strict --set monitoring.podMonitor.enabled=true,monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboards.enabled=true
log "helm install (operator.enabled=false, networkPolicy.enabled=true: RBAC for the NetworkPolicy test)"
helm upgrade --install vigil charts/vigil --namespace "$RELEASE_NS" --create-namespace \
	--set operator.enabled=false --set networkPolicy.enabled=true --wait --timeout 2m >&2

wait "$build"
log "running the e2e tests ($((SECONDS - start)) s so far)"
VIGIL_E2E_RELEASE_NAMESPACE="$RELEASE_NS" VIGIL_E2E_OPERATOR_SA=vigil-operator \
	cargo test --workspace --test e2e -- --ignored --test-threads="${VIGIL_E2E_THREADS:-2}" "$@"
log "passed in $((SECONDS - start)) s"
