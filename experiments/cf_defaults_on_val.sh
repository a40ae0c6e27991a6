#!/usr/bin/env bash
# Re-derive the counterfactual decoder's defaults on the VALIDATION split (never the test split).
#
# From a finished pipeline run dir, train the counterfactual decoder of PP-MIR and of PP-SIR with
# each alternative setting (the defaults are the pipeline's own cf_pp_mir / cf_pp_sir stages), then
# score every variant with one `task=evaluate task.split=val`: the independent disease network's
# flip rate, proximity outside the ROI, realism and the identity attacks, with 95 % intervals.
#
#   bash experiments/cf_defaults_on_val.sh outputs/<pipeline run dir> [out dir]
#   -> <out dir>/evaluate/report.md and metrics.json (default out dir: <run dir>/cf_val)
set -euo pipefail
RUN=$(realpath "$1")
OUT=$(realpath -m "${2:-$RUN/cf_val}")
PY=${PYTHON:-python}
DATA="dataset.path=$RUN/synthesize/synthetic_iris.h5"
JUDGES=(
  "task.disease_ckpt=$RUN/disease/checkpoints/best.pt"
  "task.identity_ckpt=$RUN/identity/checkpoints/best.pt"
  "task.siamese_ckpt=$RUN/siamese/checkpoints/best.pt"
)
# name -> the override that differs from the default (views=2 low-pass views, selection_roi=1)
declare -A VARIANT=(
  [plain]="objective.disease_views.views=0"
  [roi10]="objective.selection_roi=10"
)
CFS=()
for gan in pp_mir pp_sir; do
  CFS+=("task.counterfactuals.$gan=$RUN/cf_$gan/checkpoints/best.pt")
  for name in "${!VARIANT[@]}"; do
    dir="$OUT/${gan}_$name"
    [ -f "$dir/metrics.json" ] || $PY -m ppgan task=counterfactual "$DATA" "${JUDGES[@]}" \
      "task.checkpoint=$RUN/$gan/checkpoints/best.pt" "${VARIANT[$name]}" "hydra.run.dir=$dir"
    CFS+=("+task.counterfactuals.${gan}_$name=$dir/checkpoints/best.pt")
  done
done
# Only the counterfactuals are of interest: the original images stay as the reference row.
$PY -m ppgan task=evaluate task.split=val "$DATA" "${JUDGES[@]}" "${CFS[@]}" \
  '~task.methods.blur' '~task.methods.pixelate' '~task.methods.ksame' '~task.methods.prototype' \
  '~task.methods.pp_mir' '~task.methods.pp_sir' "hydra.run.dir=$OUT/evaluate"
