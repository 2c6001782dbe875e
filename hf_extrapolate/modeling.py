"""`ExtrapolatedForCausalLM`: one causal LM holding the RL and base models, with one cache for both."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Cache,
    DynamicCache,
    GenerationConfig,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import ExtrapolatedConfig, ExtrapolationConfig
from .extrapolation import NEG_INF, combine
from .loading import check_tokenizers, load_pair
from .processor import (
    NEUTRAL,
    WARPERS,
    call_settings,
    check_finite,
    check_penalties,
    model_device,
    requested_settings,
    shared_vocab_size,
)

SHIM_FILE = "modeling_hf_extrapolate.py"
SHIM = '''"""Loads an hf-extrapolate pair: `pip install hf-extrapolate`, then
AutoModelForCausalLM.from_pretrained(this_folder, trust_remote_code=True)."""

from hf_extrapolate.configuration import ExtrapolatedConfig
from hf_extrapolate.modeling import ExtrapolatedForCausalLM

__all__ = ["ExtrapolatedConfig", "ExtrapolatedForCausalLM"]
'''


class PairCache(Cache):
    """Both models' caches in one `Cache`, so that `generate` reorders, crops and selects them together."""

    def __init__(self, rl: Cache, base: Cache):
        self.rl, self.base = rl, base
        self.offloading = False
        self.layer_class_to_replicate = None

    @property
    def layers(self) -> list:
        return [*self.rl.layers, *self.base.layers]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.rl.get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.rl.reorder_cache(beam_idx.to(self._device(self.rl, beam_idx)))
        self.base.reorder_cache(beam_idx.to(self._device(self.base, beam_idx)))

    def crop(self, tokens_to_remove: int) -> None:
        self.rl.crop(tokens_to_remove)
        self.base.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.rl.batch_repeat_interleave(repeats)
        self.base.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.rl.batch_select_indices(indices)
        self.base.batch_select_indices(indices)

    def reset(self) -> None:
        self.rl.reset()
        self.base.reset()

    @staticmethod
    def _device(cache: Cache, fallback: Tensor) -> torch.device:
        keys = getattr(cache.layers[0], "keys", None) if cache.layers else None
        return keys.device if isinstance(keys, Tensor) else fallback.device


class ExtrapolatedForCausalLM(PreTrainedModel, GenerationMixin):
    r"""A causal LM whose next-token distribution is the Δlog p-extrapolated policy of an RL/base pair.

    ``forward`` returns extrapolated *log-probabilities* as ``logits`` at every position (full or selective
    mode, see `ExtrapolationConfig`), so `generate` (greedy, sampling, beam search), `output_scores` and
    log-likelihood evaluation all work on the extrapolated policy. Both models keep their own cache inside
    one `PairCache`. Tokens beyond the shared vocabulary get −inf. The models are ``.rl`` and ``.base``
    (``.base_model`` is transformers' name for the backbone, here the RL model).

    Its generation config is the RL model's with every score-changing setting neutral (`NEUTRAL`): a Qwen
    config's temperature 0.7, top-k 20 and repetition penalty 1.05 were tuned for the RL model alone, and are
    ignored at generate time whatever ``generation_config`` the wrapper holds (e.g. one loaded from a folder).
    What a `generate` call passes applies once, after extrapolation: penalties and masks to the log-probs
    ``forward`` returns; warpers to π_X in full mode (temperature and top-p only when the extrapolation
    settings leave theirs at 1). In selective mode ``temperature`` and ``top_p`` passed to `generate` replace
    the extrapolation's for that call (the proposer and π_X are sampled with them, ``temperature=0`` is the
    greedy variant; ``do_sample=False`` alone takes the mixture's argmax) and other warpers (top-k, min-p,
    typical-p, ...) are refused, so `generate` samples the exact mixture. NaN or +inf logits of either model are
    refused. One wrapper serves one `generate` call at a time (a call's settings are held on the wrapper).

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> from hf_extrapolate import ExtrapolatedForCausalLM, load_pair
    >>> rl, base, tok = load_pair("BytedTsinghua-SIA/DAPO-Qwen-32B", "Qwen/Qwen2.5-32B", device_map="auto")
    >>> model = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok)
    >>> model.save_pretrained("dapo-x0.5")  # then, anywhere with hf-extrapolate installed:
    >>> model = AutoModelForCausalLM.from_pretrained("dapo-x0.5", trust_remote_code=True, device_map="auto")
    ```
    """

    config_class = ExtrapolatedConfig
    base_model_prefix = "rl"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(
        self,
        rl_model: PreTrainedModel,
        base_model: PreTrainedModel,
        gamma: float = 0.0,
        *,
        tokenizer: Any = None,
        base_tokenizer: Any = None,
        **settings: Any,
    ):
        for role, model in (("rl_model", rl_model), ("base_model", base_model)):
            if not isinstance(model, PreTrainedModel):
                raise ValueError(f"{role} must be a transformers PreTrainedModel, got {type(model).__name__}")
        if tokenizer is not None and base_tokenizer is not None:
            check_tokenizers(tokenizer, base_tokenizer, rl_model.name_or_path, base_model.name_or_path)
        extrapolation = ExtrapolationConfig(gamma=gamma, **settings)
        rl_width = rl_model.get_output_embeddings().weight.shape[0]
        base_width = base_model.get_output_embeddings().weight.shape[0]
        config = ExtrapolatedConfig(
            rl_model_name_or_path=rl_model.name_or_path or None,
            base_model_name_or_path=base_model.name_or_path or None,
            extrapolation=extrapolation.to_dict(),
            vocab_size=rl_width,
            is_encoder_decoder=False,
        )
        super().__init__(config)
        self.rl, self.base = rl_model, base_model
        self.extrapolation = extrapolation
        self.tokenizer = tokenizer
        self.vocab_width = shared_vocab_size(rl_width, base_width, len(tokenizer) if tokenizer is not None else None)
        self.generation_config = copy.deepcopy(rl_model.generation_config)
        for name in NEUTRAL:  # saved as the pair's generation_config.json: unset, or 1 for temperature / top-p
            setattr(self.generation_config, name, 1.0 if name in ("temperature", "top_p") else None)
        self._prompt_length: int | None = None  # set while `generate` runs, for error messages

    # -- transformers plumbing -------------------------------------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.rl.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.rl.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return model_device(self.rl)

    @property
    def dtype(self) -> torch.dtype:
        return self.rl.dtype

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("ExtrapolatedForCausalLM takes input_ids (the two models embed tokens separately)")
        if cache is not None and not isinstance(cache, PairCache):
            raise ValueError(f"cache must be a PairCache holding both models' caches, got {type(cache).__name__}")
        use_cache = cache is not None if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = self.new_cache()
        if position_ids is None and attention_mask is not None:  # left padding: count real tokens only
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        caches = (cache.rl, cache.base) if cache is not None else (None, None)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        rl_logits, base_logits = (
            model(
                **{k: v.to(model_device(model)) if v is not None else None for k, v in inputs.items()},
                cache=sub_cache, use_cache=use_cache, logits_to_keep=logits_to_keep,
            ).logits
            for model, sub_cache in zip((self.rl, self.base), caches)
        )  # fmt: skip
        base_logits = base_logits.to(rl_logits.device)
        width = self.vocab_width
        past = cache.get_seq_length() - input_ids.shape[1] if cache is not None else 0
        where = f"at positions {past}..{past + input_ids.shape[1] - 1}"
        if self._prompt_length is not None:
            where = f"at generation step {past + input_ids.shape[1] - self._prompt_length}"
        real = slice(None)  # padding positions' logits are never used: only real tokens' are checked
        if attention_mask is not None:
            real = attention_mask[:, -rl_logits.shape[1] :].to(rl_logits.device).bool()
        check_finite(rl_logits[..., :width][real], "RL", where)
        check_finite(base_logits[..., :width][real], "base", where)
        logp, _ = combine(rl_logits[..., :width], base_logits[..., :width], self.extrapolation)
        if width < rl_logits.shape[-1]:
            logp = F.pad(logp, (0, rl_logits.shape[-1] - width), value=NEG_INF)
        loss = None
        if labels is not None:
            shift = logp[..., :-1, :].reshape(-1, logp.shape[-1])
            loss = F.nll_loss(shift, labels[..., 1:].reshape(-1).to(shift.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logp, cache=cache if use_cache else None)

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs: Any):
        """`GenerationMixin.generate`, with the sampling rules of the class docstring: in selective mode
        ``temperature`` / ``top_p`` given here (or in ``generation_config``) set the extrapolation's for this call."""
        settings, requested = self.extrapolation, requested_settings(generation_config, kwargs)
        self.extrapolation = call_settings(settings, requested, route="wrapper")
        check_penalties(self.extrapolation, requested)
        if settings.select is not None:  # taken by the extrapolation: generate itself must not see them
            kwargs = {k: v for k, v in kwargs.items() if k not in WARPERS}
            if generation_config is not None:
                generation_config = copy.deepcopy(generation_config)
                generation_config.temperature = generation_config.top_p = None
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        self._prompt_length = prompt.shape[-1] if isinstance(prompt, Tensor) else None
        try:
            return super().generate(inputs, generation_config, **kwargs)
        finally:
            self.extrapolation, self._prompt_length = settings, None

    def _prepare_generation_config(self, generation_config: GenerationConfig | None, **kwargs: Any):
        """Neutralise every score-changing setting the call does not ask for (the stored config's included)."""
        config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        requested = requested_settings(generation_config, kwargs)
        selective = self.extrapolation.select is not None  # its temperature / top-p live in the extrapolation
        for name, neutral in NEUTRAL.items():
            keep = name in requested and not (selective and name in WARPERS)
            setattr(config, name, requested[name] if keep else neutral)
        return config, model_kwargs

    def new_cache(self) -> PairCache:
        return PairCache(DynamicCache(config=self.rl.config), DynamicCache(config=self.base.config))

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict, *args: Any, **kwargs: Any):
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by "
                "ExtrapolatedForCausalLM; it keeps one dynamic cache per model"
            )
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = self.new_cache()

    # -- saving and loading ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, embed_models: bool | None = None, **kwargs: Any):
        """Write config (both model locations + settings), generation config, tokenizer and the loader shim.

        With ``embed_models`` (the default when a model has no hub id or local folder to point to) both
        models are saved in ``rl/`` and ``base/`` subfolders, making the folder self-contained.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        names = {"rl": self.rl.name_or_path, "base": self.base.name_or_path}
        if embed_models is None:
            embed_models = not all(names.values())
        if embed_models:
            for role, model in (("rl", self.rl), ("base", self.base)):
                model.save_pretrained(out / role, **kwargs)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(out / role)
            names = {"rl": "rl", "base": "base"}
        else:
            names = {k: str(Path(v).resolve()) if Path(v).is_dir() else v for k, v in names.items()}
        write_pair_folder(
            out, names["rl"], names["base"], self.extrapolation, self.tokenizer, self.generation_config,
            context_length(self.rl.config, self.base.config),
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, config: Any = None, **kwargs: Any
    ) -> ExtrapolatedForCausalLM:
        """Load both models named by a saved folder's config; loading options apply to both.

        Accepts `load_pair`'s options (``dtype``, ``device_map``, ``base_device_map``, ``quantization_config``,
        ``load_in_4bit``, ``load_in_8bit``) and extrapolation settings (``gamma=``, ``select=``, ...) that
        override the saved ones.
        """
        path = str(pretrained_model_name_or_path)
        if not isinstance(config, ExtrapolatedConfig):
            config = ExtrapolatedConfig.from_pretrained(path)
        settings = dict(config.extrapolation or {})
        for key in list(kwargs):
            if key in settings:
                settings[key] = kwargs.pop(key)
        for key in ("trust_remote_code", "code_revision", "_from_auto", "_commit_hash", "adapter_kwargs"):
            kwargs.pop(key, None)

        def locate(name: str | None, role: str) -> str:
            if not name:
                raise ValueError(f"{path}: config.json names no {role} model")
            local = Path(path) / name
            return str(local) if not Path(name).is_absolute() and local.is_dir() else name

        rl, base, tokenizer = load_pair(
            locate(config.rl_model_name_or_path, "RL"), locate(config.base_model_name_or_path, "base"), **kwargs
        )
        return cls(rl, base, tokenizer=tokenizer, **settings)


def register_auto_classes() -> None:
    """Let the Auto classes resolve ``model_type="hf_extrapolate"`` once this package is imported."""
    AutoConfig.register(ExtrapolatedConfig.model_type, ExtrapolatedConfig, exist_ok=True)
    AutoModelForCausalLM.register(ExtrapolatedConfig, ExtrapolatedForCausalLM, exist_ok=True)


def context_length(*configs: PretrainedConfig) -> int | None:
    """The shorter of the models' context lengths, where their configs state one."""
    lengths = [getattr(c.get_text_config(), "max_position_embeddings", None) for c in configs]
    return min((n for n in lengths if n), default=None)


def write_pair_folder(
    out: str | os.PathLike,
    rl: str,
    base: str,
    extrapolation: ExtrapolationConfig,
    tokenizer: Any = None,
    generation_config: GenerationConfig | None = None,
    max_position_embeddings: int | None = None,
) -> None:
    """Write a loadable pair folder (config naming both models, settings, tokenizer, shim) without weights.

    `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` then loads both models from ``rl`` and
    ``base`` (hub ids, absolute paths, or paths relative to ``out``). ``max_position_embeddings`` (the
    shorter context of the two) is recorded so that tools such as lm-eval know the pair's context length.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = ExtrapolatedConfig(
        rl_model_name_or_path=rl,
        base_model_name_or_path=base,
        extrapolation=extrapolation.to_dict(),
        architectures=[ExtrapolatedForCausalLM.__name__],
        auto_map={
            "AutoConfig": f"{SHIM_FILE[:-3]}.ExtrapolatedConfig",
            "AutoModelForCausalLM": f"{SHIM_FILE[:-3]}.ExtrapolatedForCausalLM",
        },
        is_encoder_decoder=False,
        max_position_embeddings=max_position_embeddings,
    )
    config.save_pretrained(out)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / SHIM_FILE).write_text(SHIM)
