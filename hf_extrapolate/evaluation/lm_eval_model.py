"""lm-eval model type ``hfx``: lm-eval's `HFLM` whose model is an `ExtrapolatedForCausalLM` built from two checkpoints.

Importing this module registers the type; ``hf-extrapolate eval`` does so (after importing ``lm_eval.models``,
see `hf_extrapolate.evaluation.command`) and then runs lm-eval's own command line. Example::

    --model hfx --model_args rl=RL_ID,base=BASE_ID,gamma=0.1,select=delta_logp,threshold=-0.3,dtype=bfloat16

Everything else is `HFLM`'s: batching, chat templates, generation, and data parallelism under
``accelerate launch`` (each process loads both models on its own device).

Sampling settings come from the task (or ``--gen_kwargs``), never from ``--model_args``. In selective mode the
wrapper itself applies temperature and top-p to the proposer and to π_X (docs/PAPER.md §2), so for each generation
call they are moved from `generate` into the wrapper, and `generate` samples the resulting distribution as is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import resolve_max_length
from lm_eval.models.utils_hf import get_dtype

from hf_extrapolate.configuration import SAMPLING_FIELDS, setting_fields
from hf_extrapolate.loading import check_device_map, check_dtype

# settings forwarded to ExtrapolatedForCausalLM when given in --model_args: the config's fields but sampling's
EXTRAPOLATION_ARGS = tuple(f.name for f in setting_fields())
# HFLM loading options that a pair of models loaded by `load_pair` cannot honour
_UNSUPPORTED = ("tp_plan", "peft", "delta", "autogptq", "gptqmodel", "gguf_file", "subfolder")
# HFLM's own placement arguments, replaced by the device_map given to `load_pair`
_PLACEMENT = ("parallelize", "gpus", "max_memory_per_gpu", "max_cpu_memory", "offload_folder")


def parse_weights(value: Any) -> tuple[float, float]:
    """``(w_base, w_rl)`` from a pair, or from ``"W_BASE:W_RL"`` (commas separate --model_args entries)."""
    parts = value.split(":") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise ValueError(f"weights must be two numbers, 'W_BASE:W_RL' (e.g. -0.1:1.1); got {value!r}")
    return float(parts[0]), float(parts[1])


def pop_settings(model_args: dict[str, Any]) -> dict[str, Any]:
    """Remove the extrapolation settings from ``model_args`` and return them (only those given); sampling settings
    are refused there, as they belong to the task (or ``--gen_kwargs``)."""
    if sampling := set(SAMPLING_FIELDS) & set(model_args):
        raise ValueError(f"set {', '.join(sorted(sampling))} in the task or with --gen_kwargs, not --model_args")
    settings = {name: model_args.pop(name) for name in EXTRAPOLATION_ARGS if name in model_args}
    if settings.get("weights") is not None:
        settings["weights"] = parse_weights(settings["weights"])
    return settings


@register_model("hfx")
class ExtrapolatedHFLM(HFLM):
    """`HFLM` over ``ExtrapolatedForCausalLM(*load_pair(rl, base))``; tokenizer and config are the RL model's.

    Args beyond `HFLM`'s: `rl`, `base` (hub ids or folders), the extrapolation settings in `EXTRAPOLATION_ARGS`
    (only those given are passed on), `base_device_map`, `load_in_4bit`, `load_in_8bit`. Other unknown
    arguments go to both `from_pretrained` calls, as HFLM does with its one model. With an explicit
    `device_map`, `base_device_map` or quantisation the models stay where `load_pair` put them.
    """

    def __init__(
        self,
        rl: str | None = None,
        base: str | None = None,
        base_device_map: str | dict | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        **kwargs: Any,
    ) -> None:
        if not rl or not base:
            raise ValueError("--model hfx needs rl=<RL model> and base=<base model> in --model_args")
        if "pretrained" in kwargs:
            raise ValueError("--model hfx takes rl= and base=, not pretrained= (use --model hf for one model)")
        check_dtype(kwargs.get("dtype"), "--model_args dtype")  # before HFLM starts (lm-eval: a traceback)
        check_device_map(kwargs.get("device_map"), "--model_args device_map")
        check_device_map(base_device_map, "--model_args base_device_map")
        self._settings = pop_settings(kwargs)
        self._base = base
        self._pair_args = dict(base_device_map=base_device_map, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        self._auto_map = bool(kwargs.get("parallelize"))
        placed = kwargs.get("device_map") is not None or base_device_map is not None or load_in_4bit or load_in_8bit
        if placed:
            kwargs["parallelize"] = True  # keeps HFLM from moving the placed pair with .to(device)
        super().__init__(pretrained=rl, **kwargs)
        if kwargs.get("parallelize") and not hasattr(self, "accelerator"):
            self._device = self.model.device  # inputs go where the RL model starts, not to HFLM's default "cuda"

    def _create_model(
        self,
        pretrained: str,
        revision: str | None = "main",
        dtype: str | torch.dtype | None = "auto",
        trust_remote_code: bool | None = False,
        **kwargs: Any,
    ) -> None:
        """Load both models with `load_pair` and wrap them (replaces HFLM's single `from_pretrained`)."""
        from hf_extrapolate import ExtrapolatedForCausalLM, load_pair

        unsupported = [name for name in _UNSUPPORTED if kwargs.pop(name, None)]
        if revision not in (None, "main"):
            unsupported.append("revision")
        if unsupported:
            raise ValueError(f"--model hfx does not support {', '.join(unsupported)}")
        for name in _PLACEMENT:
            kwargs.pop(name, None)
        device_map = kwargs.pop("device_map", None)
        if device_map is None:  # one device per process, as HFLM places its model; "auto" only when asked
            device_map = "auto" if self._auto_map else {"": str(self.device)}
        try:
            rl_model, base_model, tokenizer = load_pair(
                pretrained, self._base, dtype=get_dtype(dtype), device_map=device_map,
                trust_remote_code=bool(trust_remote_code), **self._pair_args, **kwargs,
            )  # fmt: skip
        except TypeError as err:  # an unknown --model_args entry reaches the model's __init__ through from_pretrained
            raise ValueError(
                f"--model_args: {err}; hfx takes rl=, base=, {', '.join(EXTRAPOLATION_ARGS)}, base_device_map, "
                "load_in_4bit, load_in_8bit, and HFLM's and from_pretrained's own arguments"
            ) from err
        self._model = ExtrapolatedForCausalLM(rl_model, base_model, tokenizer=tokenizer, **self._settings)

    @property
    def max_length(self) -> int:
        """``max_length`` if given, else the shorter context of the two models (the wrapper's config has none)."""
        if self._max_length:
            return self._max_length
        models = (self.model.rl, self.model.base)
        return min(resolve_max_length(m.config, self.tokenizer, default=self._DEFAULT_MAX_LENGTH) for m in models)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any):
        """Generate. The wrapper's `generate` applies the task's settings once: in selective mode its temperature
        and top-p become the extrapolation's (docs/PAPER.md §2), and other warpers are refused. A greedy task in
        selective mode (HFLM drops its temperature 0) runs the paper's greedy variant, temperature 0."""
        model = self.model
        settings = model.extrapolation
        temperature = float(generation_kwargs.get("temperature", 0.0) or 0.0)
        if settings.select is None or (temperature > 0 and generation_kwargs.get("do_sample") is not False):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        greedy = {k: v for k, v in generation_kwargs.items() if k not in ("temperature", "top_p", "do_sample")}
        model.extrapolation = dataclasses.replace(settings, temperature=0.0, top_p=1.0)
        try:
            return super()._model_generate(context, max_length, stop, do_sample=False, **greedy)
        finally:
            model.extrapolation = settings
