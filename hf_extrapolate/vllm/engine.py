"""A vLLM engine for a pair given by its members, for the CLI's ``--backend vllm`` and lm-eval's ``hfx_vllm``."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ..configuration import ExtrapolationConfig


def temporary_pair_folder(rl: str, base: str, settings: ExtrapolationConfig, **load: Any) -> str:
    """Write the folder `export` writes for ``(rl, base)`` with ``settings`` into a new temporary directory (the
    caller removes it); ``load`` (``trust_remote_code``) goes to the tokenizers, which must agree."""
    from ..loading import check_tokenizers, load_tokenizer
    from ..pair_folder import write_pair_folder
    from .config import VllmPairConfig

    tokenizer = load_tokenizer(rl, "RL", **load)
    check_tokenizers(tokenizer, load_tokenizer(base, "base", **load), rl, base)
    rl, base = (str(Path(name).resolve()) if Path(name).is_dir() else name for name in (rl, base))
    folder = tempfile.mkdtemp(prefix="hfx-vllm-pair-")
    try:
        write_pair_folder(folder, rl, base, settings, tokenizer)
        VllmPairConfig.from_pretrained(folder)  # its member checks, as one line here (vLLM wraps them in pydantic's)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def pair_engine(rl: str, base: str, settings: ExtrapolationConfig, *, trust_remote_code: bool = False, **engine: Any):
    """A `vllm.LLM` serving the pair ``(rl, base)`` with ``settings`` from a temporary pair folder (removed with the
    engine); ``engine`` goes to `vllm.LLM` (``dtype``, ``tensor_parallel_size``, ``max_model_len``, ...)."""
    from . import import_vllm, register

    LLM = import_vllm().LLM
    register()
    folder = temporary_pair_folder(rl, base, settings, trust_remote_code=trust_remote_code)
    try:
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
