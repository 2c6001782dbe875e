#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short run: the GPU tests (engine on the GPU against the CPU no-cache
# reference, a pair split across devices, bitsandbytes 4-/8-bit loading), then the benchmark with a 0.5B-shaped
# random-weight pair in bf16 and in bitsandbytes 4-bit. Results go to ${OUT:-gpu_checks}/.
#
#     bash scripts/gpu_checks.sh
set -uo pipefail
out=${OUT:-gpu_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, bitsandbytes, accelerate
print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__,
      'accelerate', accelerate.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
timeout 180 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
bench() { timeout "$1" python3 -m hf_extrapolate.cli bench --device cuda --model 0.5b --dtype bfloat16 \
    --lengths 32/256 --repeats 1 --nocache-budget 15 "${@:2}" 2>&1 | grep -v "^  repeat"; }
bench 420 --batches 1,8 --variants rl,processor,wrapper,selective --out "$out/bf16"
bench 300 --batches 1 --variants rl,processor,selective --load-in-4bit --out "$out/nf4"
