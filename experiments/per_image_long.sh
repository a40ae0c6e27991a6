#!/usr/bin/env bash
# PP-RID with the longer schedule (objective=pp_rid_long: 100 epochs, the last one kept) on the
# second data shape, with and without masks, against the default 40-epoch PP-RID of
# experiments/per_image.sh (README, "A second data shape"). Needs that script's run dir (its
# judges, data files and default PP-RID checkpoints).
#
#   bash experiments/per_image_long.sh [PER_IMAGE_ROOT] [OUT_ROOT]
#     defaults: outputs/per_image, outputs/per_image_long
#
# 1. trains pp_rid_long on each shape, one thread each side by side, with the CPU's fast
#    switches (bf16 autocast, channels_last, fused Adam; about 50 minutes each); skipped where
#    the run dir has finished;
# 2. exports each release (the file the test evaluation attacks);
# 3. validation split: both PP-RIDs, every attacker, no baselines (the choice; the masked shape's
#    choice was made by experiments/results/per_image/long_val/run.sh);
# 4. test split: both PP-RIDs and the baselines (the report), each shape once;
# 5. explanation panels made of each long release.
# Metrics, reports and gates go to experiments/results/per_image/long/ ({val,test}_{shape}_*).
# Attackers already trained by an earlier evaluation of the same inputs are reused from its
# cache (`attackers/`): the baselines' and the default PP-RID's come from per_image.sh's and
# per_image_latent.sh's evaluations, and the test split reuses the validation run's (attackers
# learn on the train and validation splits only, and their cache key holds no split).
# The masked run repeats the one of results/per_image/long_val/run.sh (the choice, made on
# validation) under the preset's name: same seed and settings, so the same weights on the same
# CPU, which the script does not assume.
#
# A variant of the long schedule: NAME (its method and run-dir name), EXTRA (its overrides), and
# OUT_ROOT / RESULTS of its own, e.g. with the `latent` term, validation only:
#   NAME=pp_rid_long_latent EXTRA=objective.loss.latent=1 SPLITS=val \
#   RESULTS=experiments/results/per_image/long_latent \
#   bash experiments/per_image_long.sh outputs/per_image outputs/per_image_long_latent
# SHAPES=masks runs one variant only; THREADS=2 then gives its training both cores (default 1,
# for the two shapes side by side; the thread count can change floating-point sums).
# Where PER_IMAGE_ROOT has no default PP-RID (per_image.sh stopped after its judges), the
# evaluations leave the 40-epoch row out.
set -euo pipefail
# A failed job ends the script at its `wait`: stop the other one too, so that a re-run does
# not find a second process training in the same run dir.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cd "$(dirname "$0")/.."
ROOT=${1:-outputs/per_image}
OUT=${2:-outputs/per_image_long}
PY=${PYTHON:-python}
RESULTS=${RESULTS:-experiments/results/per_image/long}
SPLITS=${SPLITS:-val test}
# NETS=K > 1: K independent disease networks (task.indep_networks) and the range of their
# scores; run dirs and result files get a `_netsK` suffix, e.g. NETS=3 SPLITS=val.
NETS=${NETS:-1}
NAME=${NAME:-pp_rid_long}
EXTRA=${EXTRA:-}
SHAPES=${SHAPES:-masks no_masks}
THREADS=${THREADS:-1}
TAG=""
[ "$NETS" = 1 ] || TAG="_nets$NETS"
mkdir -p "$OUT" "$RESULTS"
# shellcheck source=experiments/per_image_lib.sh
. experiments/per_image_lib.sh
FAST="trainer.amp=true trainer.channels_last=true trainer.fused_adam=true"

pids=()
for v in $SHAPES; do
    if [ -f "$OUT/$v/$NAME/metrics.json" ]; then continue; fi  # trained already
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS=$THREADS $PY -m ppgan task=anonymizer dataset=synthetic_per_image $(data $v) \
        model=rid_gan objective=pp_rid_long $FAST $EXTRA $JUDGES \
        hydra.run.dir="$OUT/$v/$NAME" > "$OUT/$v.train.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a failed job stops the script

for v in $SHAPES; do
    # shellcheck disable=SC2046
    [ -f "$OUT/$v/export/anonymized.h5" ] || $PY -m ppgan task=export \
        dataset=synthetic_per_image $(data $v) \
        task.checkpoint="$OUT/$v/$NAME/checkpoints/best.pt" hydra.run.dir="$OUT/$v/export"
done

default_rid() {  # shape split: the 40-epoch PP-RID's overrides; none where it is missing, and
    # evaluate skips a method whose checkpoint stays null
    local ckpt="$ROOT/$1/pp_rid/checkpoints/best.pt"
    [ -f "$ckpt" ] || return 0
    echo "task.methods.pp_rid.checkpoint=$ckpt"
    [ "$2" = val ] || echo "task.release_files.pp_rid=$ROOT/$1/export_pp_rid/anonymized.h5"
}
evaluate() {  # shape split extra-overrides...
    local v=$1 split=$2; shift 2
    local dir="$OUT/$v/evaluate_$split$TAG"
    seed_attackers "$dir" "$ROOT/$v/evaluate/attackers" "$ROOT/$v/evaluate_gates/attackers" \
        "outputs/per_image_latent/$v/evaluate_$split/attackers" "$OUT/$v/evaluate_$split/attackers" \
        "$OUT/$v/evaluate_val$TAG/attackers"
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS=1 $PY -m ppgan task=evaluate task.split="$split" dataset=synthetic_per_image \
        $(data "$v") $JUDGES '~task.methods.pp_mir' '~task.methods.pp_sir' \
        $(default_rid "$v" "$split") \
        "+task.methods.$NAME={_target_:ppgan.baselines.Generator,checkpoint:$OUT/$v/$NAME/checkpoints/best.pt}" \
        task.indep_networks="$NETS" "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1
    local name="${split}_${v}$TAG"
    cp "$dir/metrics.json" "$RESULTS/${name}_metrics.json"
    cp "$dir/report.md" "$RESULTS/${name}_report.md"
    $PY experiments/gates.py "$dir/metrics.json" --json "$RESULTS/${name}_gates.json" \
        | tee "$RESULTS/${name}_gates.md"
}
if [[ " $SPLITS " == *" val "* ]]; then
    pids=()
    for v in $SHAPES; do
        evaluate $v val '~task.methods.blur' '~task.methods.pixelate' '~task.methods.ksame' \
            '~task.methods.prototype' &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
fi
if [[ " $SPLITS " == *" test "* ]]; then
    # Every baseline on each shape; the exported files of both PP-RIDs (of the variant alone
    # where the 40-epoch one is missing) are attacked as shipped.
    pids=()
    for v in $SHAPES; do
        evaluate $v test "+task.release_files.$NAME=$OUT/$v/export/anonymized.h5" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
fi

for v in $SHAPES; do
    [ -f "$OUT/$v/explain/metrics.json" ] && continue  # made already
    # shellcheck disable=SC2046
    $PY -m ppgan task=explain dataset=synthetic_per_image $(data $v) \
        task.disease_ckpt="$M/disease/checkpoints/best.pt" \
        task.anonymized_file="$OUT/$v/export/anonymized.h5" hydra.run.dir="$OUT/$v/explain"
    cp "$OUT/$v/explain/metrics.json" "$RESULTS/explain_${v}_metrics.json"
done
