#!/usr/bin/env bash
# Makes sure DuckDB's Python package (PyPI `duckdb`, pinned) is in the shared venv
# (${VIGIL_CACHE:-$HOME/.cache/vigil}/venv): detector/tests/kafka_kpi_store.rs reads the KPI
# store's Parquet files with it. Prints `export VIGIL_DUCKDB_PYTHON=<venv python>` for eval.
set -euo pipefail
cache="${VIGIL_CACHE:-$HOME/.cache/vigil}"
venv="$cache/venv"
version=1.4.2
if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$version')" 2>/dev/null; then
  echo "setup-duckdb: installing duckdb $version into $venv" >&2
  mkdir -p "$cache"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "duckdb==$version" >&2
fi
echo "export VIGIL_DUCKDB_PYTHON=$venv/bin/python"
