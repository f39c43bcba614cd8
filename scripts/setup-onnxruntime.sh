#!/usr/bin/env bash
# Installs the pinned ONNX Runtime wheel into the Vigil Python venv and prints the
# ORT_DYLIB_PATH that the model server (ort with `load-dynamic`) needs.
#
# Usage:
#   eval "$(scripts/setup-onnxruntime.sh)"      # exports ORT_DYLIB_PATH into the current shell
#   scripts/setup-onnxruntime.sh --print-path   # prints only the path
#
# The venv lives at ${VIGIL_CACHE:-$HOME/.cache/vigil}/venv (outside the repo, reused across clones).
# On a fresh machine it is created and the wheel is downloaded from PyPI; later runs are no-ops.
set -euo pipefail

ORT_VERSION="${VIGIL_ORT_VERSION:-1.31.1}"   # must be >= the `api-NN` feature of the `ort` crate (api-31)
CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
VENV="$CACHE/venv"
PY="${PYTHON:-python3}"

mode="export"
case "${1:-}" in
  --print-path) mode="path" ;;
  "") ;;
  *) echo "usage: $0 [--print-path]" >&2; exit 2 ;;
esac

log() { echo "setup-onnxruntime: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
fi

have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null || true)"
if [ "$have" != "$ORT_VERSION" ]; then
  log "installing onnxruntime==$ORT_VERSION into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" >&2
fi

capi="$("$VENV/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
lib="$capi/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  log "expected $lib but it does not exist; found:"
  ls -1 "$capi" | grep -i onnxruntime >&2 || true
  exit 1
fi

if [ "$mode" = "path" ]; then
  echo "$lib"
else
  echo "export ORT_DYLIB_PATH='$lib'"
fi
