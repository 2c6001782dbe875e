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
# the performance issue's GPU targets: static caches + torch.compile (≤ 1.3× on one GPU), and concurrent forwards
bench 420 --batches 1 --variants rl,processor,wrapper,concurrent,cfg --static-cache --compile --out "$out/compiled"

# vLLM on CUDA (skipped where vLLM is not installed: `pip install vllm==0.32.*` in its own environment first, then
# `pip install --no-deps -e .`). The same equivalence tests as CI's CPU run, with CUDA graphs on (the tests' engines
# are eager; VLLM_TEST_COMPILED=1 drops enforce_eager), TP = 1, then TP = 2 where two GPUs exist; then the benchmark.
if python3 -c "import vllm" 2>/dev/null; then
    export VLLM_USE_V2_MODEL_RUNNER=0   # the per-request settings use V1 logits processors (docs/vllm.md)
    VLLM_TEST_COMPILED=1 timeout 420 python3 -m pytest -q -p no:cacheprovider -rs -m "slow or not slow" \
        tests/test_vllm.py -k "not serve" 2>&1 | tee "$out/vllm_tests.txt"
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
        VLLM_TEST_TP=2 timeout 300 python3 -m pytest -q -p no:cacheprovider -rs -m "slow or not slow" \
            tests/test_vllm.py -k "greedy_equals" 2>&1 | tee "$out/vllm_tp2.txt"
    fi
    timeout 420 python3 -m hf_extrapolate.cli bench --backend vllm --device cuda --model 0.5b --dtype bfloat16 \
        --out "$out/vllm_bench" 2>&1 | grep -v "^  repeat"
else
    echo "vllm is not installed: vLLM checks skipped" | tee "$out/vllm_tests.txt"
fi
