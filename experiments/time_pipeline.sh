#!/usr/bin/env bash
# Wall time of the default pipeline at HEAD vs at an older commit, back to back on this machine
# (README, "Results": the issue's gate is a ratio of the two, measured on one machine).
#
#   bash experiments/time_pipeline.sh [OLD_COMMIT] [OUT_ROOT]    # defaults: 9bdf608, outputs/timing
#   PYTHON=/path/to/venv/bin/python bash experiments/time_pipeline.sh    # default: python on PATH
#
# Each commit runs from a temporary git worktree (`python -m ppgan` imports the package of the
# working directory; uncommitted edits are not timed), from an empty run dir and data cache,
# under `/usr/bin/time -v`, one after the other (never side by side: on 2 cores each would slow
# the other). Writes OUT_ROOT/{new,old}.time (time -v), OUT_ROOT/{new,old}.stages (when each stage
# began) and prints the ratio.
set -euo pipefail
OLD=${1:-9bdf608}
ROOT=$(realpath -m "${2:-outputs/timing}")   # relative to where the script is called from
PY=$(command -v "${PYTHON:-python}") || { echo "time_pipeline.sh: no ${PYTHON:-python}" >&2; exit 1; }
case "$ROOT" in *[[:space:]]*)
    echo "time_pipeline.sh: OUT_ROOT must not contain spaces (a Hydra override): $ROOT" >&2; exit 1;;
esac
cd "$(dirname "$0")/.."
if [ -e "$ROOT/new" ] || [ -e "$ROOT/old" ]; then
    echo "time_pipeline.sh: $ROOT/new or $ROOT/old exists; give another OUT_ROOT" >&2
    exit 1
fi
mkdir -p "$ROOT"
TMP=$(mktemp -d)
trap 'git worktree remove --force "$TMP/new" 2>/dev/null; git worktree remove --force "$TMP/old" 2>/dev/null; rm -rf "$TMP"' EXIT
git worktree add --detach "$TMP/new" HEAD >/dev/null
git worktree add --detach "$TMP/old" "$OLD" >/dev/null

timed() {  # name
    (cd "$TMP/$1" && PPGAN_DATA_DIR="$ROOT/$1_data" /usr/bin/time -v -o "$ROOT/$1.time" \
        "$PY" -m ppgan hydra.run.dir="$ROOT/$1" > "$ROOT/$1.log" 2>&1)
    { grep -h "ppgan.pipeline.*stage .*: task=" "$ROOT/$1/__main__.log" || true; } \
        | sed -E 's/^\[[0-9-]+ ([0-9:]+),[0-9]+\].*stage ([a-z_]+):.*/\1 \2/' > "$ROOT/$1.stages"
}
echo "new: $(git rev-parse --short HEAD), old: $(git rev-parse --short "$OLD") -> $ROOT"
timed new
timed old

secs() {  # h:mm:ss or m:ss(.ss) -> seconds
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }' <<< "$1"
}
elapsed() { grep -oP 'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): \K.*' "$ROOT/$1.time"; }
awk -v n="$(secs "$(elapsed new)")" -v o="$(secs "$(elapsed old)")" -v c="$OLD" \
    'BEGIN { printf "new %s s, old (%s) %s s: ratio %.3f\n", n, c, o, n / o }'
