#!/usr/bin/env bash
# Driver for ema_temperature_rule.txt: wait for the judges, link, retrain EMA seeds, hash, evaluate.
# A record of what ran, at commit baf2057's code. Checkpoints of later commits also record their
# release temperature (one more key), so there the hash check below fails by construction; the
# training command pins objective.release_temperature=0 so that the methods below without a
# temperature are still scored at t = 0, as they were.
set -uo pipefail
cd /work/main
PY=${PYTHON:-python}
while pgrep -f "hydra.run.dir=outputs/s20/judges_run" > /dev/null; do sleep 20; done
echo "judges done $(date -u +%T)"
mkdir -p outputs/timing_s17 outputs/default_val/judges outputs/default_val/rid
ln -sfn /work/main/outputs/s20/judges_run outputs/timing_s17/new
for n in disease identity siamese; do
  ln -sfn /work/main/outputs/timing_s17/new/$n/checkpoints/best.pt outputs/default_val/judges/$n.pt
done
for s in 0 1 2; do
  echo "train ema2_seed$s start $(date -u +%T)"
  $PY -m ppgan task=anonymizer model=rid_gan objective=pp_rid \
    hydra.run.dir=outputs/default_val/rid/ema2_seed$s \
    task.disease_ckpt=outputs/default_val/judges/disease.pt \
    task.identity_ckpt=outputs/default_val/judges/identity.pt \
    trainer.device=cpu dataset.path=outputs/timing_s17/new/synthesize/synthetic_iris.h5 \
    seed=$s objective.ema_half_life=2 objective.release_temperature=0 > outputs/default_val/rid/ema2_seed$s.log 2>&1
  echo "train ema2_seed$s exit $? end $(date -u +%T)"
done
$PY experiments/results/default_val/retrain_s20_hash.py; hrc=$?
methods=()
for s in 0 1 2; do
  ck=outputs/default_val/rid/ema2_seed$s/checkpoints/best.pt
  methods+=("+task.methods.ema2_seed${s}_t05={_target_:ppgan.baselines.Generator,checkpoint:$ck,temperature:0.5}")
  if [ $hrc -ne 0 ]; then
    methods+=("+task.methods.ema2_seed${s}={_target_:ppgan.baselines.Generator,checkpoint:$ck}")
  fi
done
echo "evaluate start $(date -u +%T)"
$PY -m ppgan task=evaluate task.split=val hydra.run.dir=outputs/default_val/rid/evaluate/ema2_t05 \
  task.disease_ckpt=outputs/default_val/judges/disease.pt \
  task.identity_ckpt=outputs/default_val/judges/identity.pt \
  task.siamese_ckpt=outputs/default_val/judges/siamese.pt \
  trainer.device=cpu dataset.path=/work/main/outputs/timing_s17/new/synthesize/synthetic_iris.h5 \
  '~task.methods.blur' '~task.methods.ksame' '~task.methods.prototype' '~task.methods.pixelate' \
  '~task.methods.pp_mir' '~task.methods.pp_sir' '~task.methods.pp_rid' \
  "${methods[@]}" > outputs/default_val/rid/evaluate_ema2_t05.log 2>&1
echo "evaluate exit $? end $(date -u +%T)"
