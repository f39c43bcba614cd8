#!/usr/bin/env bash
# The NAB machine-temperature scenario end to end on the embedded broker (librdkafka's in-process
# mock cluster): the series is replayed into a topic with its event timestamps, the detector
# consumes it in a consumer group, alerts are produced to the alerts topic, read back and printed
# next to the labelled anomaly windows. No external service is needed.
#
#   scripts/demo.sh [extra `vigil run` flags, e.g. --bootstrap-servers 127.0.0.1:19092]
set -euo pipefail
cd "$(dirname "$0")/.."
NAB_DATA="${NAB_DATA:-../shared/datasets/nab}"
series="$NAB_DATA/data/realKnownCause/machine_temperature_system_failure.csv"
[ -f "$series" ] || { echo "demo: NAB data not found at $NAB_DATA (set NAB_DATA)" >&2; exit 1; }
cargo build --release -q -p vigil
exec target/release/vigil run \
  --pipeline manifests/examples/nab-machine-temperature.yaml \
  --rules manifests/examples/nab-machine-temperature.yaml \
  --replay "$series" --replay-key machine-1 \
  --labels "$NAB_DATA/combined_windows.json" \
  --exit-when-idle "$@"
