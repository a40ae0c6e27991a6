#!/usr/bin/env bash
# PP-RID on the 128 px data with masks, 100 epochs with the CPU's fast switches, no early stop;
# then the validation split: the default PP-RID (experiments/per_image.sh) against this run's
# LAST checkpoint (epoch 100; the validation score selected epoch 24). Needs per_image.sh's run
# dir. ~51 min training at one thread, ~3 min evaluation with cached attackers.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
ROOT=${1:-outputs/per_image}
OUT=${2:-outputs/long128}
PY=${PYTHON:-python}
# shellcheck source=experiments/per_image_lib.sh
. experiments/per_image_lib.sh
# shellcheck disable=SC2086
[ -f "$OUT/masks/metrics.json" ] || OMP_NUM_THREADS=1 $PY -m ppgan task=anonymizer \
    dataset=synthetic_per_image dataset.path=$M/synthesize/synthetic_iris.h5 model=rid_gan \
    objective=pp_rid objective.ema_half_life=0 objective.release_temperature=0 task.epochs=100 \
    task.patience=0 trainer.amp=true \
    trainer.channels_last=true \
    trainer.fused_adam=true $JUDGES hydra.run.dir=$OUT/masks
# The attackers trained on the originals (unseen identity, independent disease) and the default
# PP-RID's adaptive ones, from per_image_latent.sh's validation run: the same networks as the
# README's other validation tables (the independent disease score depends on the network).
seed_attackers "$OUT/evaluate_val" "${CACHE:-outputs/per_image_latent/masks/evaluate_val/attackers}"
# shellcheck disable=SC2086
$PY -m ppgan task=evaluate task.split=val dataset=synthetic_per_image \
    dataset.path=$M/synthesize/synthetic_iris.h5 $JUDGES '~task.methods.pp_mir' \
    '~task.methods.pp_sir' '~task.methods.blur' '~task.methods.pixelate' '~task.methods.ksame' \
    '~task.methods.prototype' task.methods.pp_rid.checkpoint=$M/pp_rid/checkpoints/best.pt \
    "+task.methods.pp_rid_epoch100={_target_:ppgan.baselines.Generator,checkpoint:$OUT/masks/checkpoints/last.pt}" \
    hydra.run.dir=$OUT/evaluate_val
RESULTS=experiments/results/per_image/long_val
cp "$OUT/evaluate_val/metrics.json" "$RESULTS/val_masks_metrics.json"
cp "$OUT/evaluate_val/report.md" "$RESULTS/val_masks_report.md"
cp "$OUT/masks/metrics.json" "$RESULTS/train_metrics.json"
$PY experiments/gates.py "$OUT/evaluate_val/metrics.json" | tee "$RESULTS/val_masks_gates.md"
