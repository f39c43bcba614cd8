#!/usr/bin/env bash
# The NAB machine-temperature series end to end on the embedded broker (librdkafka's in-process
# mock cluster), scored by the recommended rules for a metric of unknown kind
# (manifests/examples/nab/: the ensemble of the seasonal baseline, the random cut forest and the
# contextual memory, nothing tuned to this series; docs/quality.md): the series is replayed into a topic with its
# event timestamps, the detector consumes it in a consumer group, alerts are produced to the
# alerts topic, read back and printed next to the labelled anomaly windows, and a SUMMARY line
# counts the labelled windows alerted on and the alerts outside them. No external service is
# needed.
#
#   scripts/demo.sh [extra `vigil run` flags, e.g. --bootstrap-servers 127.0.0.1:19092]
# Environment: VIGIL_NAB_DATA (default: the repository's data/nab), VIGIL_BIN (a built `vigil`;
# default: `cargo build --release -p vigil`).
set -euo pipefail
cd "$(dirname "$0")/.."
nab="${VIGIL_NAB_DATA:-data/nab}"
series="$nab/data/realKnownCause/machine_temperature_system_failure.csv"
[ -f "$series" ] || { echo "demo: NAB data not found at $nab (set VIGIL_NAB_DATA)" >&2; exit 1; }
if [ -z "${VIGIL_BIN:-}" ]; then
  echo "demo: building vigil (release; the first build takes several minutes)" >&2
  cargo build --release -p vigil
  VIGIL_BIN=target/release/vigil
fi
exec "$VIGIL_BIN" run \
  --pipeline manifests/examples/nab/pipeline.yaml \
  --rules manifests/examples/nab/rules.yaml \
  --replay "$series" --replay-key machine-1 \
  --labels "$nab/combined_windows.json" \
  --exit-when-idle "$@"
