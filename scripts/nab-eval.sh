#!/usr/bin/env bash
# Detection quality on NAB-format series: runs `vigil score` over every listed file of a data
# folder (in parallel, one process per file) and prints the three NAB profile scores
# (standard, reward_low_FP_rate, reward_low_FN_rate) computed by the NAB scorer.
#
# Usage: scripts/nab-eval.sh [options] [-- extra scorer arguments, e.g. --per-file]
#   --nab DIR         NAB folder with data/, combined_windows.json and dev.txt
#                     (default: $VIGIL_NAB_DATA, else the repository's data/nab)
#   --files SPEC      scorer file list: a text file or comma-separated list (default: DIR/dev.txt)
#   --pipeline FILE   StreamPipeline manifest (default: manifests/examples/nab/pipeline.yaml)
#   --rules FILE      DetectionRule manifest (default: manifests/examples/nab/rules.yaml)
#   --rule NAME       score only this rule (repeatable; an ensemble brings its members)
#   --key NAME        entity key of every file's events (default: the file name); the random
#                     cut forest is seeded from the key, so other keys give other forests
#   --out DIR         where per-file results go (default: a fresh temporary folder)
#   --threshold T     score at this fixed threshold instead of NAB's per-profile optimum
#   --scorer FILE     NAB scorer (default: ../shared/bench/nab_score.py)
#   --json FILE       also write the scorer's results as JSON
#   --loo             out-of-sample figures instead (scripts/nab_loo.py): the threshold chosen
#                     leaving each series, then each category, out; with --threshold also the
#                     score at that threshold
#   --null SPEC       with --loo: anomaly-free files also scored, alarms at --threshold counted
#                     (e.g. artificialNoAnomaly)
# Environment: VIGIL_BIN (a built `vigil`; default: `cargo build --release -p vigil`),
# VIGIL_CACHE (default ~/.cache/vigil; the scorer's Python venv lives in $VIGIL_CACHE/venv),
# JOBS (parallel files; default: number of CPUs).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${VIGIL_CACHE:-$HOME/.cache/vigil}
nab="${VIGIL_NAB_DATA:-$root/data/nab}"
files=""
pipeline="$root/manifests/examples/nab/pipeline.yaml"
rules="$root/manifests/examples/nab/rules.yaml"
score_args=()
out=""
threshold=""
scorer="$root/../shared/bench/nab_score.py"
json=""
loo=""
null=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nab) nab=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --pipeline) pipeline=$2; shift 2 ;;
    --rules) rules=$2; shift 2 ;;
    --rule) score_args+=(--rule "$2"); shift 2 ;;
    --key) score_args+=(--key "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --threshold) threshold=$2; shift 2 ;;
    --scorer) scorer=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --loo) loo=1; shift ;;
    --null) null=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "nab-eval: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
files=${files:-$nab/dev.txt}
[[ -d "$nab/data" && -f "$nab/combined_windows.json" ]] || { echo "nab-eval: $nab has no data/ or combined_windows.json" >&2; exit 2; }
[[ -f "$scorer" ]] || { echo "nab-eval: scorer $scorer not found" >&2; exit 2; }

# The scorer's Python: numpy and pandas, pinned, in the shared venv.
venv="$cache/venv"
if ! "$venv/bin/python" -c 'import numpy, pandas' 2>/dev/null; then
  echo "nab-eval: preparing $venv (numpy, pandas)" >&2
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet numpy==2.4.6 pandas==3.1.1
fi

if [[ -z "${VIGIL_BIN:-}" ]]; then
  (cd "$root" && cargo build --quiet --release -p vigil)
  VIGIL_BIN="${CARGO_TARGET_DIR:-$root/target}/release/vigil"
fi

# The data files to score: the scorer's list (files, or folders meaning every labelled file under them).
mapfile -t rel < <("$venv/bin/python" - "$scorer" "$nab/combined_windows.json" "$files" "$null" <<'PY'
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("nab_score", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
labels = json.load(open(sys.argv[2]))
files = m.expand_files(sys.argv[3], labels) + (m.expand_files(sys.argv[4], labels) if sys.argv[4] else [])
print("\n".join(dict.fromkeys(files)))
PY
)
[[ ${#rel[@]} -gt 0 ]] || { echo "nab-eval: no files selected by $files" >&2; exit 2; }

out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/vigil-nab.XXXXXX")}
start=$(date +%s%N)
export VIGIL_BIN nab out pipeline rules RUST_LOG=${RUST_LOG:-warn}
# shellcheck disable=SC2016 # the inner script expands its own variables
printf '%s\n' "${rel[@]}" | xargs -P "${JOBS:-$(nproc)}" -I{} bash -c '
  mkdir -p "$(dirname "$out/$1")"
  "$VIGIL_BIN" score --pipeline "$pipeline" --rules "$rules" "${@:2}" --input "$nab/data/$1" --output "$out/$1"
' _ {} "${score_args[@]}"
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
echo "scored ${#rel[@]} files in $((ms / 1000)).$(printf %03d $((ms % 1000))) s -> $out"

args=(--data "$nab/data" --labels "$nab/combined_windows.json" --results "$out" --files "$files")
[[ -n "$threshold" ]] && args+=(--threshold "$threshold")
[[ -n "$json" ]] && args+=(--json "$json")
if [[ -n "$loo" ]]; then
  [[ -n "$null" ]] && args+=(--null "$null")
  exec "$venv/bin/python" "$root/scripts/nab_loo.py" --scorer "$scorer" "${args[@]}" "${extra[@]}"
fi
"$venv/bin/python" "$scorer" "${args[@]}" "${extra[@]}"
