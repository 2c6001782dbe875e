"""The vLLM variants of `hf-extrapolate bench`: one measurement of the RL model alone or of the pair in vLLM.

Each runs in the bench's fresh worker process, with the engine in that process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
``distributed_executor_backend="uni"``) so that its peak memory is the worker's, and random weights
(``load_format="dummy"``) of the bench's preset shapes, so no weights are written or read.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..bench import GAMMA, _memory, _peak, _reset_peak, measurement, preset_config, random_prompts
from ..configuration import ExtrapolationConfig
from ..loading import model_memory
from ..pair_folder import write_pair_folder


def measure_vllm(
    variant: str, prompt: int, new: int, batch: int, *, preset: str, device: str, dtype: str, top_p: float
) -> dict[str, Any]:
    """Start an engine (timed), warm it up, and time one `generate` of ``batch`` random prompts emitting exactly
    ``new`` tokens each, sampled at temperature 1 with ``top_p``; the same fields as `hf_extrapolate.bench.measure`."""
    config = preset_config(preset)
    config.architectures = ["LlamaForCausalLM"]  # what vLLM builds (a config made in memory names none)
    halves = 2 if variant == "vllm-pair" else 1
    one = model_memory(config, dtype, tokens=prompt + new, batch=batch)  # one half: weights and KV cache
    kv_bytes = halves * one["kv_cache_gib"] * 2**30
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(1.25 * kv_bytes / 2**30))))  # GiB
    from vllm import LLM, SamplingParams, TokensPrompt

    from . import register

    start_memory = _memory(device)
    with tempfile.TemporaryDirectory() as root:
        for role in ("rl", "base"):
            config.save_pretrained(Path(root) / role)
        folder = Path(root) / "rl"
        if variant == "vllm-pair":
            register()
            folder = Path(root) / "pair"
            write_pair_folder(folder, str(Path(root, "rl")), str(Path(root, "base")), ExtrapolationConfig(gamma=GAMMA))
        began = time.perf_counter()
        llm = LLM(str(folder), load_format="dummy", skip_tokenizer_init=True, dtype=dtype, seed=0,
                  distributed_executor_backend="uni", max_model_len=prompt + new, max_num_seqs=batch)  # fmt: skip
        startup = time.perf_counter() - began
    prompts = [TokensPrompt(prompt_token_ids=row) for row in random_prompts(config.vocab_size, batch, prompt).tolist()]

    def generate(n: int) -> list[Any]:
        params = SamplingParams(temperature=1.0, top_p=top_p, max_tokens=n, min_tokens=n, ignore_eos=True, seed=0,
                                detokenize=False)  # fmt: skip
        return llm.generate(prompts, params, use_tqdm=False)

    generate(4)  # warm-up
    _reset_peak()
    began, began_cpu = time.perf_counter(), time.process_time()
    outs = generate(new)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    tokens = min(len(o.outputs[0].token_ids) for o in outs)
    if tokens < new:
        raise RuntimeError(f"{variant}: vLLM made {tokens} new tokens, not {new}")
    expected = halves * one["weights_gib"] * 2**30 + kv_bytes
    return measurement(seconds, cpu_seconds, startup, tokens, _peak(device) - start_memory, expected)
