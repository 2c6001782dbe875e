"""lm-eval model type ``hfx_vllm``: lm-eval's own `VLLM` model over the pair as one vLLM model (`hf_extrapolate.vllm`).

``hf-extrapolate eval --backend vllm`` selects it in place of ``hfx``, with the same ``--model_args``::

    --model hfx_vllm --model_args rl=RL_ID,base=BASE_ID,gamma=0.1,select=delta_logp,threshold=-0.3,dtype=bfloat16
    --model hfx_vllm --model_args pretrained=PAIR_DIR      # a folder written by `hf-extrapolate export`

Everything else is lm-eval's `VLLM`: ``tensor_parallel_size``, ``data_parallel_size``, ``max_model_len``,
``gpu_memory_utilization``, batching. The stock ``--model vllm --model_args pretrained=PAIR_DIR`` runs the same
engine; what ``hfx_vllm`` adds is the task's sampling in selective mode: as in the ``hfx`` route, the task's
temperature and top-p become the extrapolation's for each request (`SamplingParams.extra_args`), and vLLM's own
sampler samples the pair's distribution as is (temperature 1, or 0 for a greedy task).
"""

from __future__ import annotations

import shutil
import weakref
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM

from hf_extrapolate.configuration import ExtrapolatedConfig, ExtrapolationConfig
from hf_extrapolate.evaluation.lm_eval_model import pop_settings
from hf_extrapolate.vllm import register
from hf_extrapolate.vllm.engine import temporary_pair_folder
from hf_extrapolate.vllm.sampling import EXTRA_ARGS_KEY, warps


@register_model("hfx_vllm")
class ExtrapolatedVLLM(VLLM):
    """lm-eval's `VLLM` over a pair folder: ``pretrained=PAIR_DIR``, or ``rl=`` and ``base=`` with the settings of
    `hf_extrapolate.evaluation.lm_eval_model.EXTRAPOLATION_ARGS` (a temporary folder is written, removed with the
    model). Other arguments are `VLLM`'s."""

    def __init__(self, pretrained: str | None = None, rl: str | None = None, base: str | None = None, **kwargs: Any):
        settings = pop_settings(kwargs)
        if pretrained and (rl or base or settings):
            raise ValueError("--model hfx_vllm takes pretrained=PAIR_DIR, or rl=, base= and settings; not both")
        if not pretrained:
            if not rl or not base:
                raise ValueError("--model hfx_vllm needs rl=<RL model> and base=<base model> (or pretrained=PAIR_DIR)")
            load = {"trust_remote_code": bool(kwargs.get("trust_remote_code", False))}
            pretrained = temporary_pair_folder(rl, base, ExtrapolationConfig(**settings), **load)
            weakref.finalize(self, shutil.rmtree, pretrained, ignore_errors=True)
        config = ExtrapolatedConfig.from_pretrained(pretrained)
        if config.model_type != ExtrapolatedConfig.model_type:
            raise ValueError(f"pretrained={pretrained} is not a pair folder (write one with `hf-extrapolate export`)")
        self.pair_settings = ExtrapolationConfig.from_dict(config.extrapolation or {})
        register()  # this process; vLLM's own processes register through the entry point
        super().__init__(pretrained=pretrained, **kwargs)

    def modify_gen_kwargs(
        self, gen_kwargs: dict[str, Any], eos: str | list[str] | None = None, default_max_gen_toks: int = 256
    ) -> tuple[dict[str, Any], list[str], int]:
        """`VLLM.modify_gen_kwargs`; where the pair warps its own distribution, the task's temperature and top-p go
        to the pair (per request) and vLLM's sampler is left neutral."""
        kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos, default_max_gen_toks)
        if warps(self.pair_settings):
            temperature, top_p = float(kwargs.pop("temperature", 1.0)), float(kwargs.pop("top_p", 1.0))
            extra = dict(kwargs.pop("extra_args", None) or {})
            extra[EXTRA_ARGS_KEY] = {**extra.get(EXTRA_ARGS_KEY, {}), "temperature": temperature, "top_p": top_p}
            kwargs.update(temperature=0.0 if temperature == 0 else 1.0, top_p=1.0, extra_args=extra)
        return kwargs, until, max_gen_toks
