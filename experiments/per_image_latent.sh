#!/usr/bin/env bash
# PP-RID with the `latent` term (objective.loss.latent=1) on the second data shape, with and
# without masks, against the default PP-RID of experiments/per_image.sh (README, "A second data
# shape"). Needs that script's run dir (its judges, data files and default PP-RID checkpoints).
#
#   bash experiments/per_image_latent.sh [PER_IMAGE_ROOT] [OUT_ROOT]
#     defaults: outputs/per_image, outputs/per_image_latent
#
# 1. trains the variant on each shape (one thread each, side by side; skipped where its run dir
#    has finished);
# 2. validation split: the variant and the default PP-RID, every attacker (the choice);
# 3. test split: the same with the baselines (the report); metrics, reports, gates and content
#    probes into experiments/results/per_image/latent_val/ ({val,test}_{masks,no_masks}_*).
# Attackers already trained by an earlier evaluation of the same inputs are reused from its
# cache (`attackers/`), e.g. those of experiments/per_image.sh for the test split.
#
# A further variant on top of the latent term, against both: NAME (its method and run-dir name),
# EXTRA (its overrides), LATENT_ROOT (where the latent variant's run dirs are), RESULTS and
# SPLITS (default "val test"; the test split only once the variant is chosen on validation):
#   NAME=pp_rid_df EXTRA=objective.loss.disease_feat=1 LATENT_ROOT=outputs/per_image_latent \
#   RESULTS=experiments/results/per_image/disease_feat_val SPLITS=val \
#   bash experiments/per_image_latent.sh outputs/per_image outputs/disease_feat
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-outputs/per_image}
OUT=${2:-outputs/per_image_latent}
PY=${PYTHON:-python}
NAME=${NAME:-pp_rid_latent}
EXTRA=${EXTRA:-}
LATENT_ROOT=${LATENT_ROOT:-$OUT}
RESULTS=${RESULTS:-experiments/results/per_image/latent_val}
SPLITS=${SPLITS:-val test}
mkdir -p "$OUT" "$RESULTS"
# shellcheck source=experiments/per_image_lib.sh
. experiments/per_image_lib.sh
method() {  # a run dir's best checkpoint as an evaluated method: name dir
    echo "+task.methods.$1={_target_:ppgan.baselines.Generator,checkpoint:$2/checkpoints/best.pt}"
}

pids=()
for v in masks no_masks; do
    if [ -f "$OUT/$v/$NAME/metrics.json" ]; then continue; fi  # trained already
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS=1 $PY -m ppgan task=anonymizer dataset=synthetic_per_image $(data $v) \
        model=rid_gan objective=pp_rid objective.ema_half_life=0 objective.release_temperature=0 \
        objective.loss.latent=1 $EXTRA $JUDGES \
        hydra.run.dir="$OUT/$v/$NAME" > "$OUT/$v.train.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a failed job stops the script

evaluate() {  # shape split extra-overrides...
    local v=$1 split=$2; shift 2
    local further=""
    [ "$NAME" = pp_rid_latent ] || further=$(method "$NAME" "$OUT/$v/$NAME")
    local dir="$OUT/$v/evaluate_$split"
    seed_attackers "$dir" "$ROOT/$v/evaluate/attackers" "$ROOT/$v/evaluate_gates/attackers" \
        "$LATENT_ROOT/$v/evaluate_$split/attackers"
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS=1 $PY -m ppgan task=evaluate task.split="$split" dataset=synthetic_per_image \
        $(data "$v") $JUDGES '~task.methods.pp_mir' '~task.methods.pp_sir' \
        task.methods.pp_rid.checkpoint="$ROOT/$v/pp_rid/checkpoints/best.pt" \
        "$(method pp_rid_latent "$LATENT_ROOT/$v/pp_rid_latent")" $further \
        "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1
    cp "$dir/metrics.json" "$RESULTS/${split}_${v}_metrics.json"
    cp "$dir/report.md" "$RESULTS/${split}_${v}_report.md"
    $PY experiments/gates.py "$dir/metrics.json" | tee "$RESULTS/${split}_${v}_gates.md"
}
BASELINES="~task.methods.blur ~task.methods.pixelate ~task.methods.ksame ~task.methods.prototype"
if [[ " $SPLITS " == *" val "* ]]; then
    pids=()
    # shellcheck disable=SC2086
    for v in masks no_masks; do evaluate $v val $BASELINES & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
fi
if [[ " $SPLITS " == *" test "* ]]; then
    # The masked variant's test table keeps the baselines of experiments/per_image.sh's (no
    # pixelate, no prototype); the exported file of the default PP-RID is attacked as there.
    evaluate masks test '~task.methods.pixelate' '~task.methods.prototype' \
        "task.release_files.pp_rid=$ROOT/masks/export_pp_rid/anonymized.h5" &
    pids=($!)
    evaluate no_masks test "task.release_files.pp_rid=$ROOT/no_masks/export_pp_rid/anonymized.h5" &
    pids+=($!)
    for p in "${pids[@]}"; do wait "$p"; done
fi
for v in masks no_masks; do
    $PY experiments/probe_content.py "$OUT/$v/$NAME/checkpoints/best.pt" \
        "$ROOT/$v/synthesize/synthetic_iris.h5" --json "$RESULTS/probe_${v}_${NAME#pp_rid_}.json"
    if [ "$NAME" = pp_rid_latent ]; then
        $PY experiments/probe_content.py "$ROOT/$v/pp_rid/checkpoints/best.pt" \
            "$ROOT/$v/synthesize/synthetic_iris.h5" --json "$RESULTS/probe_${v}_default.json"
    fi
done
