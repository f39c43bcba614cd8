#!/usr/bin/env bash
# What OpenTelemetry tracing costs the detector: `vigil bench`'s detector phase on a topic whose
# every record carries a sampled W3C `traceparent` (producers that trace everything), with
# tracing off, on at the default (the detector reads the trace context of 1 record in 1,000,
# VIGIL_TRACE_RECORD_RATIO=0.001), at 1 %, and at 100 %, exporting to a real Jaeger (built by
# e2e/tools.sh jaeger). Runs alternate, so load drift on a shared machine hits all alike;
# compares events per CPU-second of the detector phase (`e2e_eps_per_cpu_second`).
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

# Prints events per CPU-second of the detector phase (whole process).
bench() {
  env -u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG "$@" RUST_LOG=warn target/release/vigil bench --events "$events" --engine-events 100000 \
    --latency-seconds 0 --traceparent-every "${every:-1}" |
    sed -n 's/.*e2e_eps_per_cpu_second=\([0-9]*\).*/\1/p'
}
endpoint="http://127.0.0.1:$otlp"
configs=(off default ratio1 all)
declare -A label=(
  [off]="tracing off (traceparent on every record)"
  [default]="on, default: 0.1 % of records read"
  [ratio1]="on, 1 % of records read"
  [all]="on, 100 % of records read and traced"
)
declare -A results
for r in $(seq 1 "$rounds"); do
  echo "round $r, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  for c in "${configs[@]}"; do
    case $c in
    off) v="$(bench -u OTEL_EXPORTER_OTLP_ENDPOINT)" ;;
    default) v="$(bench -u VIGIL_TRACE_RECORD_RATIO OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint")" ;;
    ratio1) v="$(bench OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" VIGIL_TRACE_RECORD_RATIO=0.01)" ;;
    all) v="$(bench OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" VIGIL_TRACE_RECORD_RATIO=1)" ;;
    esac
    results[$c]="${results[$c]:-} $v"
    echo "  $c $v" >&2
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
base="$(echo "${results[off]}" | median)"
printf '%-45s %14s %8s   %s\n' "detector phase, $events events, $rounds rounds" "median ev/CPU-s" "vs off" "all runs"
for c in "${configs[@]}"; do
  m="$(echo "${results[$c]}" | median)"
  printf '%-45s %14.0f %7.1f%%   %s\n' "${label[$c]}" "$m" "$(echo "($m / $base - 1) * 100" | bc -l)" "${results[$c]}"
done
echo "spans in Jaeger by service: $(curl -s "http://127.0.0.1:$query/api/services" || true)"
