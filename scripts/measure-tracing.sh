#!/usr/bin/env bash
# What OpenTelemetry tracing costs the detector: `vigil bench`'s detector phase on a topic whose
# every record carries a sampled W3C `traceparent` (producers that trace everything), with
# tracing off, on at the detector's default sampling (traceidratio 1 %), and on at 100 %
# (always_on), exporting to a real Jaeger (built by e2e/tools.sh jaeger). Runs alternate, so
# load drift on a shared machine hits all three alike; compare `e2e_eps_per_cpu_second`.
#
#   scripts/measure-tracing.sh [rounds (default 3)] [events (default 1000000)]
#
# Needs a broker: scripts/kafka.sh start && eval "$(scripts/kafka.sh env)".
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
events="${2:-1000000}"
: "${KAFKA_BOOTSTRAP:?start a broker: scripts/kafka.sh start && eval \"\$(scripts/kafka.sh env)\"}"

jaeger="$(e2e/tools.sh jaeger | tail -n1)"
cargo build --release -q -p vigil
dir="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
otlp="$(port)"
query="$(port)"
cat >"$dir/jaeger.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, logs: {level: warn}}
extensions:
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "127.0.0.1:$query"}
    grpc: {endpoint: "127.0.0.1:$(port)"}
  jaeger_storage:
    backends: {memstore: {memory: {max_traces: 100000}}}
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:$otlp"}}}
processors:
  batch: {}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
YAML
"$jaeger" --config "$dir/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
jaeger_pid=$!
trap 'kill $jaeger_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 3

bench() {
  env "$@" RUST_LOG=warn target/release/vigil bench --events "$events" --engine-events 100000 \
    --latency-seconds 0 --traceparent-every 1 | grep -E '^(tracing|detector|cpu):'
}
for r in $(seq 1 "$rounds"); do
  echo "--- round $r, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "[off]"
  bench -u OTEL_EXPORTER_OTLP_ENDPOINT
  echo "[default sampling]"
  bench -u OTEL_TRACES_SAMPLER OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp"
  echo "[100 %]"
  bench OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp" OTEL_TRACES_SAMPLER=always_on
done
echo "--- spans in Jaeger by service:"
curl -s "http://127.0.0.1:$query/api/services" || true
echo
