"""A vLLM engine for a pair given by its members, for the CLI's ``--backend vllm``."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ..configuration import ExtrapolationConfig


def pair_engine(rl: str, base: str, settings: ExtrapolationConfig, *, trust_remote_code: bool = False, **engine: Any):
    """A `vllm.LLM` serving the pair ``(rl, base)`` with ``settings``: it writes the folder `export` writes (in a
    temporary directory, removed with the engine) and loads it; ``engine`` goes to `vllm.LLM` (``dtype``,
    ``tensor_parallel_size``, ``max_model_len``, ...)."""
    from vllm import LLM

    from ..loading import check_tokenizers, load_tokenizer
    from ..modeling import write_pair_folder
    from . import register

    tokenizer = load_tokenizer(rl, "RL", trust_remote_code=trust_remote_code)
    check_tokenizers(tokenizer, load_tokenizer(base, "base", trust_remote_code=trust_remote_code), rl, base)
    register()
    rl, base = (str(Path(name).resolve()) if Path(name).is_dir() else name for name in (rl, base))
    folder = tempfile.mkdtemp(prefix="hfx-vllm-pair-")
    try:
        write_pair_folder(folder, rl, base, settings, tokenizer)
        llm = LLM(folder, trust_remote_code=trust_remote_code, **engine)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(llm, shutil.rmtree, folder, ignore_errors=True)
    return llm


def pair_sampling_params(settings: ExtrapolationConfig, max_new_tokens: int, seed: int | None = None, **kw: Any):
    """`vllm.SamplingParams` that draw from the pair's distribution as it is: the pair applies its own temperature
    and top-p (`ExtrapolationConfig`), so vLLM's sampler stays neutral (greedy when the settings' temperature is 0)."""
    from vllm import SamplingParams

    temperature = 0.0 if settings.temperature == 0 else 1.0
    return SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens, seed=seed, **kw)
