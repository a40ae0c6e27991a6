#!/usr/bin/env bash
# PP-RID released at a temperature (README, "A second data shape"): the content part of the
# release latent drawn as mu + t * sigma * eps from the encoder's own posterior (Encoder.release;
# task.temperature of task=export, `temperature` of ppgan.baselines.Generator) instead of its
# mean, so that part of what the mean still carries of the person is redrawn for every image.
# No training: the 160-epoch masked checkpoint of experiments/per_image_long.sh's xlong run,
# judged by per_image.sh's networks, as that run was.
#
#   bash experiments/per_image_temperature.sh [PER_IMAGE_ROOT] [XLONG_ROOT]
#     defaults: outputs/per_image, outputs/per_image_xlong
#
# SPLIT=val (default): every temperature of TEMPS (default "0.5 1") in one evaluation of the
#   validation split, every attacker, no baselines; gates to RESULTS/val_masks_t<temps>_gates.*
#   (t05_t1 for the default: the name says which temperatures were read together).
# SPLIT=test TEMP=t: the test split, read once for the temperature chosen on validation: the
#   release exported at t (attacked as shipped), every baseline, and the explanation panels.
# Metrics, reports and gates go to RESULTS (default experiments/results/per_image/temperature).
# Another checkpoint of the same data and judges: CKPT (its best.pt), NAME (the method's name
# stem, default pp_rid_xlong) and OUT (its run dirs), e.g. the 100-epoch preset:
#   CKPT=outputs/per_image_long100/masks/pp_rid_long/checkpoints/best.pt NAME=pp_rid_long \
#   OUT=outputs/per_image_long100/masks/temperature TEMPS="0 0.25" \
#   RESULTS=experiments/results/per_image/temperature_long100 bash experiments/per_image_temperature.sh
# SHAPE (default masks): the data the checkpoint was trained on, masks | roi_masks (the file
# without masks, its ROI from task=roi_masks in the file ROI_MASKS); it names the outputs, e.g.
#   SHAPE=roi_masks ROI_MASKS=outputs/per_image_roi/no_masks/roi_masks/masks.h5 \
#   CKPT=outputs/per_image_roi/no_masks/pp_rid_long/checkpoints/best.pt NAME=pp_rid_long \
#   OUT=outputs/per_image_roi/no_masks/temperature TEMPS="0 0.25" \
#   RESULTS=experiments/results/per_image/roi_masks bash experiments/per_image_temperature.sh
# RESULTS_TAG=xlong: a second checkpoint into the same RESULTS and OUT keeps its own names
#   (val_<SHAPE>_xlong_t..., test_<SHAPE>_xlong_t..., OUT/export_xlong_t...). A result that
#   RESULTS already holds (the committed ones included) is never replaced: the script stops
#   before any work unless OVERWRITE=1. SPLIT=test attacks the export in OUT/export<tag>_t<t> if
#   there is one: delete it to export afresh (its row order is a new draw, so the numbers change).
# ATTACKERS_FROM="dir...": attacker caches searched before the usual ones (cache keys are checked:
#   a stale one is retrained), e.g. another checkpoint's validation run dir's attackers/, so that
#   its unseen identity network, independent disease network(s) and originals' attackers are
#   reused, bit for bit, and two checkpoints are judged by the same networks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-outputs/per_image}
XL=${2:-outputs/per_image_xlong}
PY=${PYTHON:-python}
RESULTS=${RESULTS:-experiments/results/per_image/temperature}
SPLIT=${SPLIT:-val}
TEMPS=${TEMPS:-0.5 1}
THREADS=${THREADS:-2}
SHAPE=${SHAPE:-masks}
NETS=${NETS:-1}  # NETS=3: validation scored by three independent disease networks (*_nets3_*)
RESULTS_TAG=${RESULTS_TAG:-}
[[ "$RESULTS_TAG" =~ ^[A-Za-z0-9.-]*$ ]] || { echo "per_image_temperature.sh: RESULTS_TAG=$RESULTS_TAG: letters, digits, . and - only" >&2; exit 1; }
TAG=${RESULTS_TAG:+_$RESULTS_TAG}
# shellcheck disable=SC2206
CACHES=(${ATTACKERS_FROM:-})
for c in ${CACHES[@]+"${CACHES[@]}"}; do
    [ -d "$c" ] || { echo "per_image_temperature.sh: ATTACKERS_FROM: $c: no such directory" >&2; exit 1; }
done
# shellcheck source=experiments/per_image_lib.sh
. experiments/per_image_lib.sh
CKPT=${CKPT:-$XL/masks/pp_rid_xlong/checkpoints/best.pt}
NAME=${NAME:-pp_rid_xlong}
OUT=${OUT:-$XL/masks/temperature}
[ -f "$CKPT" ] || { echo "per_image_temperature.sh: $CKPT: no checkpoint (run per_image_long.sh's xlong first)" >&2; exit 1; }
data "$SHAPE" > /dev/null  # an unknown SHAPE, or roi_masks without ROI_MASKS, stops here
[ "$SHAPE" != roi_masks ] || [ -f "$ROI_MASKS" ] || { echo "per_image_temperature.sh: ROI_MASKS=$ROI_MASKS: no such file (run task=roi_masks first)" >&2; exit 1; }
mkdir -p "$OUT" "$RESULTS"
unclaimed() {  # result-name: stop before any work if RESULTS already holds it
    [ "${OVERWRITE:-0}" = 1 ] || [ ! -e "$RESULTS/${1}_metrics.json" ] || {
        echo "per_image_temperature.sh: $RESULTS/${1}_metrics.json exists: set RESULTS_TAG to keep both, or OVERWRITE=1 to replace it" >&2
        exit 1
    }
}
method() {  # t: the evaluate override of the checkpoint released at temperature t
    echo "+task.methods.${NAME}_t${1//./}={_target_:ppgan.baselines.Generator,checkpoint:$CKPT,temperature:$1}"
}
evaluate() {  # split name overrides...
    local split=$1 name=$2 dir="$OUT/evaluate_$2"; shift 2
    # attackers already trained (their cache key holds no split; a stale one is retrained; the
    # first cache holding a file wins): ATTACKERS_FROM, this checkpoint's validation runs, then the
    # originals' from the xlong evaluation, the baselines' from the long_latent test evaluation
    # (per_image_long.sh, the same data and judges)
    seed_attackers "$dir" ${CACHES[@]+"${CACHES[@]}"} "$OUT"/evaluate_val_"$SHAPE"*/attackers \
        "$XL/masks/evaluate_val/attackers" "$ROOT/masks/evaluate/attackers" \
        "$(dirname "$ROOT")/per_image_long_latent/masks/evaluate_test/attackers" \
        "$(dirname "$ROOT")/per_image_long_latent/no_masks/evaluate_val/attackers"
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS=$THREADS $PY -m ppgan task=evaluate task.split="$split" \
        dataset=synthetic_per_image $(data "$SHAPE") $JUDGES \
        '~task.methods.pp_mir' '~task.methods.pp_sir' "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1
    cp "$dir/metrics.json" "$RESULTS/${name}_metrics.json"
    cp "$dir/report.md" "$RESULTS/${name}_report.md"
    $PY experiments/gates.py "$dir/metrics.json" --json "$RESULTS/${name}_gates.json" \
        | tee "$RESULTS/${name}_gates.md"
}
if [ "$SPLIT" = val ]; then
    methods=() tag=""
    for t in $TEMPS; do methods+=("$(method "$t")") tag+="_t${t//./}"; done
    [ "$NETS" = 1 ] || tag+="_nets$NETS"
    name="val_$SHAPE$TAG$tag"
    unclaimed "$name"
    evaluate val "$name" "task.indep_networks=$NETS" '~task.methods.blur' '~task.methods.pixelate' '~task.methods.ksame' \
        '~task.methods.prototype' "${methods[@]}"
elif [ "$SPLIT" = test ]; then
    t=${TEMP:?SPLIT=test needs TEMP, the temperature chosen on validation}
    ex="$OUT/export${TAG}_t${t//./}" name="test_$SHAPE${TAG}_t${t//./}"
    unclaimed "$name"
    [ -f "$ex/anonymized.h5" ] || OMP_NUM_THREADS=$THREADS $PY -m ppgan task=export \
        dataset=synthetic_per_image $(data "$SHAPE") task.checkpoint="$CKPT" task.temperature="$t" \
        hydra.run.dir="$ex"
    evaluate test "$name" "$(method "$t")" \
        "+task.release_files.${NAME}_t${t//./}=$ex/anonymized.h5"
    OMP_NUM_THREADS=$THREADS $PY -m ppgan task=explain dataset=synthetic_per_image $(data "$SHAPE") \
        task.disease_ckpt="$M/disease/checkpoints/best.pt" \
        task.anonymized_file="$ex/anonymized.h5" hydra.run.dir="$OUT/explain${TAG}_t${t//./}"
    cp "$OUT/explain${TAG}_t${t//./}/metrics.json" "$RESULTS/explain_$SHAPE${TAG}_t${t//./}_metrics.json"
else
    echo "per_image_temperature.sh: SPLIT=$SPLIT: choose val or test" >&2
    exit 1
fi
