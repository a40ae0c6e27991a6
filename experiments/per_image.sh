#!/usr/bin/env bash
# The default pipeline on the second data shape (dataset=synthetic_per_image: 128 px, 1 channel,
# 3 disease classes drawn per image), with and without ROI masks, and the issue's gates for each
# (README, "A second data shape"; results in experiments/results/per_image/).
#
#   bash experiments/per_image.sh [OUT_ROOT]        # default outputs/per_image
#
# Both variants train PP-RID (the default anonymizer), its export, evaluation and explanations
# with the pipeline's defaults, the masked one also its counterfactual decoder; PP-MIR (and the
# unmasked counterfactual) are left out to fit the CPU budget (at 128 px each stage costs about
# twice the default data set's). The variant
# without masks reuses the masked variant's judges (disease, identity and siamese networks):
# `dataset.generator.masks` changes no pixel of the data set (same seed, same images; only the
# `masks` key is left out), and none of those networks reads a mask, so training them again
# would reproduce them. Its own data file (no `masks` key) is what every later stage reads.
# The two GAN chains run side by side, one thread each (same total CPU work, less waiting).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-outputs/per_image}
PY=${PYTHON:-python}
RESULTS=experiments/results/per_image
mkdir -p "$RESULTS"
# PP-SIR and the counterfactuals of PP-MIR/PP-SIR are skipped as in the default pipeline, PP-MIR too.
SKIP="pp_sir,export_pp_sir,cf_pp_sir,cf_pp_mir,pp_mir,export_pp_mir"

# 1. Data and judges (masks), both threads.
$PY -m ppgan dataset=synthetic_per_image hydra.run.dir="$ROOT/masks" \
    "task.skip=[$SKIP,pp_rid,export_pp_rid,cf_pp_rid,evaluate,explain]" \
    task.metrics_from=siamese

# 2. The file without masks: the same images.
$PY -m ppgan task=synthesize dataset=synthetic_per_image dataset.generator.masks=false \
    hydra.run.dir="$ROOT/no_masks/synthesize"

# 3. The two GAN chains side by side, with PP-RID as it was when these ran (before its weight
# average and release temperature 0.5 became the default on the 64 px data).
OLD_RID="objective.ema_half_life=0 objective.release_temperature=0 task.rid_temperature=0"
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 $PY -m ppgan dataset=synthetic_per_image hydra.run.dir="$ROOT/masks" \
    "task.skip=[$SKIP]" $OLD_RID > "$ROOT/masks.log" 2>&1 &
masks=$!
OMP_NUM_THREADS=1 $PY -m ppgan dataset=synthetic_per_image dataset.generator.masks=false \
    dataset.path="$ROOT/no_masks/synthesize/synthetic_iris.h5" task.judges_from="$ROOT/masks" \
    hydra.run.dir="$ROOT/no_masks" "task.skip=[$SKIP,cf_pp_rid]" $OLD_RID \
    > "$ROOT/no_masks.log" 2>&1 &
no_masks=$!
wait $masks
wait $no_masks

for v in masks no_masks; do
    mkdir -p "$RESULTS/$v"
    cp "$ROOT/$v/evaluate/metrics.json" "$ROOT/$v/evaluate/report.md" "$RESULTS/$v/"
    cp "$ROOT/$v/explain/metrics.json" "$RESULTS/$v/explain_metrics.json"
    $PY experiments/gates.py "$ROOT/$v/evaluate/metrics.json" --json "$RESULTS/$v/gates.json" \
        | tee "$RESULTS/$v/gates.md"
done
