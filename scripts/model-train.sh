#!/usr/bin/env bash
# Trains Vigil's reference models on NAB window features and exports them to ONNX:
#   models/repository/{iforest,lstm-ae}/1/{model.onnx,config.yaml}   (served by vigil-model-server)
#   models/testdata/*.json                                            (test vectors, feature goldens)
# Each export is checked inside the script: ONNX Runtime must reproduce scikit-learn / numpy to 1e-4
# on held-back rows, or the script fails.
#
# Usage: scripts/model-train.sh [NAB_DIR]     (default: $VIGIL_NAB_DATA, else the repository's data/nab)
# Python deps (models/requirements.txt, pinned) go into ${VIGIL_CACHE:-$HOME/.cache/vigil}/venv.
# Not part of CI: the exported models are committed. Takes about 15 s on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
nab="${1:-${VIGIL_NAB_DATA:-$root/data/nab}}"
CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
VENV="$CACHE/venv"
PY="${PYTHON:-python3}"

if [ ! -f "$nab/dev.txt" ]; then
  echo "model-train: no NAB dataset at $nab (expected dev.txt and data/); pass its path" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.vigil-models-requirements"
if ! cmp -s "$root/models/requirements.txt" "$stamp"; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/models/requirements.txt" >&2
  cp "$root/models/requirements.txt" "$stamp"
fi
cd "$root/models"
exec "$VENV/bin/python" -m vigil_models.train --nab "$nab" --repo repository --testdata testdata
