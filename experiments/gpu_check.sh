#!/usr/bin/env bash
# The GPU check, run on a CUDA machine from the repo root (results under $OUT):
# CUDA correctness tests, the GAN step benchmark (fp32 / bf16), the default pipeline on the GPU.
# Needs hydra-core, omegaconf and antlr4 wheels in .whl/ where they are not installed.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -n 15 | tee "$OUT/pytest_gpu.txt"
python3 experiments/bench_gan_step.py --device cuda --iters 30 2>&1 | tee "$OUT/bench_cuda.jsonl"
start=$(date +%s)
python3 -m ppgan hydra.run.dir=/tmp/pipe_gpu paths.data_dir=/tmp/pipe_gpu_data > "$OUT/pipeline_gpu.log" 2>&1
echo "pipeline exit $? in $(( $(date +%s) - start )) s" | tee "$OUT/pipeline_time.txt"
cp /tmp/pipe_gpu/evaluate/report.md "$OUT/report_gpu.md" 2>/dev/null
cp /tmp/pipe_gpu/metrics.json "$OUT/pipeline_metrics_gpu.json" 2>/dev/null
tail -n 5 "$OUT/pipeline_gpu.log"
