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

ARCHITECTURE = "ExtrapolatedForCausalLM"  # what `write_pair_folder` writes in config.json's `architectures`


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


def register() -> None:
    """Register the pair's config and architecture with vLLM (idempotent: vLLM may call it more than once)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from ..configuration import ExtrapolatedConfig
    from .config import VllmPairConfig

    _CONFIG_REGISTRY[ExtrapolatedConfig.model_type] = VllmPairConfig
    MODELS_CONFIG_MAP[ARCHITECTURE] = PairConfigHook
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "hf_extrapolate.vllm.model:ExtrapolatedPairForCausalLM")
