#!/usr/bin/env bash
# Wall time of the default pipeline now vs at an older commit, back to back on this machine
# (README, "Results": the issue's gate is a ratio of the two, measured on one machine).
#
#   bash experiments/time_pipeline.sh [OLD_COMMIT] [OUT_ROOT]    # defaults: 9bdf608, outputs/timing
#
# Each run starts from an empty run dir and an empty data cache, under `/usr/bin/time -v`, one after
# the other (never side by side: on 2 cores each would slow the other). The old commit runs from a
# temporary git worktree (`python -m ppgan` imports the package of the working directory).
# Writes OUT_ROOT/{new,old}.time (time -v), OUT_ROOT/{new,old}.stages (when each stage began)
# and prints the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:-9bdf608}
ROOT=$(realpath -m "${2:-outputs/timing}")
PY=${PYTHON:-python}
if [ -e "$ROOT/new" ] || [ -e "$ROOT/old" ]; then
    echo "time_pipeline.sh: $ROOT/new or $ROOT/old exists; give another OUT_ROOT" >&2
    exit 1
fi
mkdir -p "$ROOT"
WT=$(mktemp -d)/ppgan_old
git worktree add --detach "$WT" "$OLD" >/dev/null
trap 'git worktree remove --force "$WT"' EXIT

timed() {  # name dir-to-run-in
    (cd "$2" && PPGAN_DATA_DIR="$ROOT/$1_data" /usr/bin/time -v -o "$ROOT/$1.time" \
        "$PY" -m ppgan hydra.run.dir="$ROOT/$1" > "$ROOT/$1.log" 2>&1)
    grep -h "ppgan.pipeline.*stage .*: task=" "$ROOT/$1/__main__.log" \
        | sed -E 's/^\[[0-9-]+ ([0-9:]+),[0-9]+\].*stage ([a-z_]+):.*/\1 \2/' > "$ROOT/$1.stages"
}
timed new "$PWD"
timed old "$WT"

secs() {  # h:mm:ss or m:ss(.ss) -> seconds
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }' <<< "$1"
}
new=$(grep -oP 'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): \K.*' "$ROOT/new.time")
old=$(grep -oP 'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): \K.*' "$ROOT/old.time")
awk -v n="$(secs "$new")" -v o="$(secs "$old")" -v c="$OLD" \
    'BEGIN { printf "new %s s, old (%s) %s s: ratio %.3f\n", n, c, o, n / o }'
