#!/usr/bin/env bash
# PP-RID variants on the 128 px data with masks, validation split (the test split is not read).
set -euo pipefail
M=${M:-outputs/per_image/masks}
V=${V:-outputs/per_image_val}
gen() { echo "+task.methods.$1={_target_:ppgan.baselines.Generator,checkpoint:$2}"; }
${PYTHON:-python} -m ppgan task=evaluate task.split=val dataset=synthetic_per_image \
  dataset.path=$M/synthesize/synthetic_iris.h5 \
  task.disease_ckpt=$M/disease/checkpoints/best.pt task.identity_ckpt=$M/identity/checkpoints/best.pt \
  task.siamese_ckpt=$M/siamese/checkpoints/best.pt \
  '~task.methods.blur' '~task.methods.pixelate' '~task.methods.ksame' '~task.methods.prototype' \
  '~task.methods.pp_mir' '~task.methods.pp_sir' \
  task.methods.pp_rid.checkpoint=$M/pp_rid/checkpoints/best.pt \
  "$(gen pp_rid_nadv3 $V/nadv3/checkpoints/best.pt)" "$(gen pp_rid_adapt3 $V/adapt3/checkpoints/best.pt)" \
  hydra.run.dir=$V/evaluate
