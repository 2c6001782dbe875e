"""`DeltaLogpExtrapolation`: a `transformers` logits processor that brings the base model into `generate`.

Also the rules both decoding routes (this processor and `ExtrapolatedForCausalLM`) apply to `generate`'s own
settings, so that each sampling setting has one owner and penalties apply once, after extrapolation.
Those rules and the processor stay in one file: the processor's `generate_kwargs` is where they are applied.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import threading
from typing import Any

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)

from .configuration import ExtrapolationConfig, extrapolation_config
from .extrapolation import NEG_INF, check_finite_scores, combine, shared_vocab_size
from .loading import model_device

# `generate`'s warpers (run after every logits processor), each with the value that leaves the scores unchanged
WARPERS: dict[str, Any] = {
    "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "top_h": None,
}  # fmt: skip
# settings whose processors `generate` runs *before* user logits processors (penalties, masks, forced tokens);
# both routes apply them once, after extrapolation, to π_X or the selective mixture
PENALTIES: dict[str, Any] = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "sequence_bias": None, "bad_words_ids": None,
    "min_length": 0, "min_new_tokens": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "remove_invalid_values": False,
}  # fmt: skip
# every setting that changes the scores, neutral: what a model's own generation_config contributes to a pair
NEUTRAL: dict[str, Any] = {**WARPERS, **PENALTIES, "guidance_scale": None}
SELECTIVE_SAMPLING = ("temperature", "top_p")  # the only warpers selective mode takes (as its own settings)
# the name of a model's KV-cache argument and output field: `cache` from transformers 5.24 on, `past_key_values` before
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else (
    "past_key_values"
)


def position_ids(attention_mask: Tensor) -> Tensor:
    """``cumsum(mask) − 1`` (clamped at 0): the positions `generate` gives, so padding on either side is harmless."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def neutral_generation_config(config: GenerationConfig) -> GenerationConfig:
    """A copy of a member's ``config`` with every score-changing setting (`NEUTRAL`) unset, and temperature / top-p
    1: a pair's own generation config, so that no member's defaults (Qwen's temperature 0.7, say) warp the pair."""
    config = copy.deepcopy(config)
    for name in NEUTRAL:
        setattr(config, name, 1.0 if name in ("temperature", "top_p") else None)
    return config


def is_neutral(name: str, value: Any) -> bool:
    return value is None or value == NEUTRAL[name]


def requested_settings(generation_config: GenerationConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The score-changing settings a `generate` call sets itself: its arguments and its own ``generation_config``
    (a model's stored generation_config is not a request: both routes treat it as neutral)."""
    given = {k: getattr(generation_config, k, None) for k in NEUTRAL} if generation_config is not None else {}
    given.update({k: kwargs[k] for k in NEUTRAL if k in kwargs})
    return {k: v for k, v in given.items() if v is not None}


def _is_cut(name: str, value: Any) -> bool:
    return name in WARPERS and name not in SELECTIVE_SAMPLING and not is_neutral(name, value)


def call_settings(config: ExtrapolationConfig, requested: dict[str, Any], route: str) -> ExtrapolationConfig:
    """The extrapolation settings of one `generate` call, refusing any setting that would be applied twice.

    Full mode: `generate`'s warpers act on π_X as on any model, except temperature and top-p when the
    extrapolation sets them too. Selective mode samples its exact mixture: `generate` may only pass temperature
    and top-p, which on the wrapper (``route="wrapper"``) replace the extrapolation's for this call and on the
    processor (``route="processor"``, shared by calls) must be 1 or the processor's own.
    """
    if not is_neutral("guidance_scale", requested.get("guidance_scale")):
        raise ValueError("guidance_scale (classifier-free guidance) cannot be combined with extrapolation; drop it")
    if config.select is None:
        for name in SELECTIVE_SAMPLING:
            if not is_neutral(name, requested.get(name)) and getattr(config, name) != 1:
                raise ValueError(
                    f"{name} is set twice, in generate ({requested[name]}) and in the extrapolation settings "
                    f"({getattr(config, name)}); keep one"
                )
        return config
    cut = [f"{k}={v!r}" for k, v in requested.items() if _is_cut(k, v)]
    if cut:
        raise ValueError(
            f"selective extrapolation samples its exact mixture, which generate's {', '.join(cut)} would cut: "
            "drop it (top_k=0 turns top-k off); only temperature and top_p are taken, by the extrapolation"
        )
    given = {k: requested[k] for k in SELECTIVE_SAMPLING if k in requested}
    if route == "wrapper":
        return dataclasses.replace(config, **given)
    for name, value in given.items():
        if not is_neutral(name, value) and value != getattr(config, name):
            raise ValueError(
                f"set {name}={value} on DeltaLogpExtrapolation(...), not in generate: in selective mode the "
                "processor applies it to the proposer and to π_X, and generate samples its output as is"
            )
    return config


def check_penalties(config: ExtrapolationConfig, requested: dict[str, Any]) -> None:
    """Refuse penalties after a one-hot distribution (temperature 0): they could only remove its one token."""
    penalties = [f"{k}={v!r}" for k, v in requested.items() if k in PENALTIES and not is_neutral(k, v)]
    if config.temperature == 0 and penalties:
        raise ValueError(
            f"with temperature=0 the extrapolation emits one token with probability 1, so {', '.join(penalties)} "
            "(applied after it) could only leave no token: use temperature > 0 with do_sample=False (the argmax "
            "of the penalised distribution) or drop them"
        )


class _Stream:
    """One thread's decoding state: the base model's cache, the ids it holds, and the prompt whose mask is known."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.cache: DynamicCache | None = None
        self.ids: Tensor | None = None  # the token ids the cache holds, [batch, length]
        self.start = 0  # length of the sequences when the cache was last rebuilt (the prompt length)
        self.prompt: tuple[Tensor, Tensor] | None = None  # (input_ids, attention_mask) from `generate_kwargs`


class DeltaLogpExtrapolation(LogitsProcessor):
    r"""Extrapolate the model being generated from (the RL model) away from a base model, along Δlog p.

    Full mode (``select=None``) returns, for every token,

        log π_X(y) = (1 + γ) · log π_RL(y) − γ · log π_base(y) − log Z,

    so γ = 0 is exactly the RL model. Selective mode (``select="delta_logp"``, ``threshold=τ``) returns the
    exact distribution of the paper's two-stage sampler: the base model proposes ``y`` with this processor's
    ``temperature`` and ``top_p``; if ``Δlog p(y) ≤ τ`` the token is resampled from π_X; ``temperature=0``
    gives the paper's greedy variant. See `ExtrapolationConfig` for every setting.

    Call `generate` through `generate_kwargs`: ``rl.generate(**proc.generate_kwargs(rl, **inputs, ...))``. It
    hands the processor the prompts' attention mask (logits processors see only ``input_ids``), runs
    `generate`'s penalties and masks (repetition penalty, no-repeat n-grams, sequence bias, bad words, min
    tokens, ...) *after* extrapolation as the wrapper does, and makes every warper the RL model's own
    generation_config sets neutral (a Qwen config's temperature 0.7 / top-k 20, transformers' default top-k 50).
    Warpers given in the call apply to π_X in full mode; selective mode refuses all but temperature and top-p
    equal to 1 or to the processor's own. Used directly in ``logits_processor=[proc]``, the processor takes a
    single prompt as unpadded and refuses a batch (its padding is unknown) and scores already masked by an
    earlier processor.

    The base model keeps its own KV cache across steps and is fed only the new tokens. Each call checks the
    rows of ``input_ids`` against what it has cached: a continuation is fed incrementally, rows reordered
    by beam search reorder the cache, and anything else (a new prompt, assisted-decoding rollback) crops or
    rebuilds it, so one processor can be reused across `generate` calls. That state is kept per thread, so
    one processor may serve `generate` calls in several threads at once (the rates below pool them all);
    call `generate_kwargs` in the thread that runs `generate`. NaN or +inf logits of either model are refused.

    In selective mode `resample_rate` is the mean probability that an emitted token was redrawn from π_X, and
    `changed_rate` the mean probability that it differs from the proposal (a redraw may return the proposed
    token), both in closed form over the rows still generating at every step since construction or `reset()`.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from hf_extrapolate import DeltaLogpExtrapolation
    >>> tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-32B")
    >>> base = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-32B", dtype="auto", device_map="auto")
    >>> rl = AutoModelForCausalLM.from_pretrained("BytedTsinghua-SIA/DAPO-Qwen-32B", dtype="auto", device_map="auto")
    >>> proc = DeltaLogpExtrapolation(base, gamma=0.05, select="delta_logp", threshold=-0.3, top_p=0.7, tokenizer=tok)
    >>> enc = tok(["What is 2 + 3?", "What is 17 * 23?"], return_tensors="pt", padding=True).to(rl.device)
    >>> out = rl.generate(**proc.generate_kwargs(rl, **enc, do_sample=True, max_new_tokens=256))
    ```
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        config: ExtrapolationConfig | float | None = None,
        *,
        tokenizer: Any = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        **settings: Any,
    ):
        """``config``: an `ExtrapolationConfig`, or γ as a number; or give its fields as keywords (``settings``)."""
        if not isinstance(base_model, PreTrainedModel):
            raise ValueError(f"base_model must be a transformers PreTrainedModel, got {type(base_model).__name__}")
        self.config = extrapolation_config(config, **settings)
        self.base_model = base_model
        self.tokenizer_size = len(tokenizer) if tokenizer is not None else None
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = base_model.generation_config.pad_token_id
        # rows whose last token is one of these have finished: they are left out of the rates (never of decoding)
        eos = getattr(tokenizer, "eos_token_id", None) or base_model.generation_config.eos_token_id
        stops = [t for t in [pad_token_id, *(eos if isinstance(eos, list) else [eos])] if t is not None]
        self._stop_ids = torch.tensor(stops or [-1])
        self.generator = generator
        self._local = threading.local()
        self._lock = threading.Lock()
        self._epoch = 0
        self.reset()

    def reset(self) -> None:
        """Drop the base model's caches (of every thread) and the flag statistics (a cache is also rebuilt
        automatically whenever the prompt changes)."""
        with self._lock:
            self._epoch += 1
            self._rate_sums: Tensor | None = None  # [resampled, changed], summed over emitting rows and steps
            self._steps: Tensor | None = None

    def _stream(self) -> _Stream:
        stream = getattr(self._local, "stream", None)
        if stream is None or stream.epoch != self._epoch:
            stream = self._local.stream = _Stream(self._epoch)
        return stream

    def _rate(self, which: int) -> float | None:
        return None if self._rate_sums is None else float(self._rate_sums[which]) / max(float(self._steps), 1.0)

    @property
    def resample_rate(self) -> float | None:
        """Mean chance that an emitted token was redrawn from π_X, since construction or `reset()`; ``None`` in
        full mode."""
        return self._rate(0)

    @property
    def changed_rate(self) -> float | None:
        """Mean chance that an emitted token differs from the proposal, since construction or `reset()`; ``None``
        in full mode."""
        return self._rate(1)

    # -- the generate call -----------------------------------------------------------------------------
    def generate_kwargs(self, model: PreTrainedModel, inputs: Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """The arguments for ``model.generate`` (``model`` is the RL model) under which `generate` samples exactly
        what this processor returns, followed by the call's penalties.

        Takes `generate`'s arguments (``inputs`` or ``input_ids``, ``attention_mask`` — required for a batch of several
        prompts —, ``generation_config``, ``logits_processor``, sampling and penalty settings, anything else) and
        returns them with: this processor first in ``logits_processor``; the processors `generate` would build
        for the penalty settings (see `PENALTIES`) next, then the caller's own; every score-changing setting
        passed explicitly (neutral unless the call asked for it; see `call_settings` for the warpers). It also
        tells this processor, in this thread, the prompts' attention mask.
        """
        kwargs = dict(kwargs)
        ids = kwargs.pop("input_ids", inputs)
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise ValueError("generate_kwargs needs input_ids, the tokenised prompts as a [batch, length] tensor")
        mask = kwargs.pop("attention_mask", None)
        if mask is None:
            if ids.shape[0] > 1:
                raise ValueError(
                    f"generate_kwargs needs the attention_mask of a batch of {ids.shape[0]} prompts (pass the "
                    "tokenizer's output: **tokenizer(prompts, padding=True, return_tensors='pt'))"
                )
            mask = torch.ones_like(ids)
        if (given := kwargs.pop("generation_config", None)) is not None:  # flattened, so nothing is merged twice
            kwargs = {**{k: v for k, v in given.to_diff_dict().items() if k in known_keys()}, **kwargs}
        requested = requested_settings(None, kwargs)
        check_penalties(call_settings(self.config, requested, route="processor"), requested)
        own = [p for p in kwargs.pop("logits_processor", None) or [] if p is not self]
        config, _ = model._prepare_generation_config(None, **{k: v for k, v in kwargs.items() if k in known_keys()})
        # the penalty processors, built by generate's own code from a copy that asks for nothing else
        penalties = copy.deepcopy(config)
        for name, neutral in NEUTRAL.items():
            setattr(penalties, name, requested.get(name, neutral) if name in PENALTIES else neutral)
        penalties.do_sample, penalties.watermarking_config, penalties.renormalize_logits = False, None, False
        model._prepare_special_tokens(penalties, True, device=ids.device)
        expanded = mask.repeat_interleave(max(config.num_beams or 1, config.num_return_sequences or 1), dim=0)
        after = model._get_logits_processor(
            generation_config=penalties, input_ids_seq_length=ids.shape[1], encoder_input_ids=ids,
            prefix_allowed_tokens_fn=kwargs.pop("prefix_allowed_tokens_fn", None),
            logits_processor=LogitsProcessorList(), device=ids.device,
            model_kwargs={"attention_mask": None if bool((expanded == 1).all()) else expanded},
        )  # fmt: skip
        sampling = config.do_sample and self.config.select is None  # full mode: the call's warpers act on π_X
        settings = {k: requested.get(k, v) if sampling and k in WARPERS else v for k, v in NEUTRAL.items()}
        if not config.do_sample:  # warpers are not used: leave them out rather than trip generate's warnings
            settings = {k: v for k, v in settings.items() if k not in WARPERS}
        self._stream().prompt = (ids, mask)
        return {
            **kwargs, **settings, "input_ids": ids, "attention_mask": mask,
            "logits_processor": LogitsProcessorList([self, *after, *own]),
        }  # fmt: skip

    def _attention_mask(self, stream: _Stream, input_ids: Tensor) -> Tensor | None:
        """The mask the RL model sees for ``input_ids``: the prompt's (from `generate_kwargs`), then ones."""
        if stream.prompt is not None:
            ids, mask = stream.prompt
            rows, length = input_ids.shape[0] // ids.shape[0], ids.shape[1]
            if input_ids.shape[0] % ids.shape[0] == 0 and input_ids.shape[1] >= length:
                ids = ids.to(input_ids.device).repeat_interleave(rows, dim=0)
                if torch.equal(input_ids[:, :length], ids):
                    mask = mask.to(input_ids.device).long().repeat_interleave(rows, dim=0)
                    return torch.cat([mask, mask.new_ones(mask.shape[0], input_ids.shape[1] - length)], dim=-1)
        if input_ids.shape[0] == 1:
            return None  # a single prompt is not padded
        raise ValueError(
            f"DeltaLogpExtrapolation does not know the attention mask of this batch of {input_ids.shape[0]} rows "
            "(logits processors see only input_ids): call rl.generate(**proc.generate_kwargs(rl, **inputs, ...))"
        )

    def _sync(self, stream: _Stream, input_ids: Tensor) -> int:
        """Make the cache a prefix of ``input_ids``; return the position from which tokens must be fed."""
        cached = stream.ids
        if cached is None or cached.shape[0] != input_ids.shape[0]:
            stream.cache, stream.start = DynamicCache(config=self.base_model.config), input_ids.shape[1]
            return 0
        n = min(cached.shape[1], input_ids.shape[1])
        same = cached[:, :n] == input_ids[:, :n]
        if not bool(same.all()):  # one host sync per step; generate itself syncs on stopping criteria anyway
            match = (input_ids[:, None, :n] == cached[None, :, :n]).all(-1)  # [new row, cached row]
            if bool(match.any(-1).all()):  # beam search reordered (and duplicated) rows
                beam_idx = match.int().argmax(-1)
                stream.cache.reorder_cache(beam_idx.to(model_device(self.base_model)))
                stream.ids = cached = cached[beam_idx]
            else:
                n = int(same.all(0).int().cumprod(0).sum())  # longest prefix common to every row
        n = min(n, input_ids.shape[1] - 1)  # always feed at least one token
        if n == 0:
            stream.cache, stream.start = DynamicCache(config=self.base_model.config), input_ids.shape[1]
        elif n < cached.shape[1]:
            stream.cache.crop(n - cached.shape[1])
        return n

    @torch.no_grad()
    def base_log_probs(self, input_ids: Tensor) -> Tensor:
        """The base model's next-token logits for every row of ``input_ids``, ``[batch, vocab_base]`` float32."""
        stream = self._stream()
        mask = self._attention_mask(stream, input_ids)
        start = self._sync(stream, input_ids)
        device = model_device(self.base_model)
        ids = input_ids.to(device)
        mask = torch.ones_like(ids) if mask is None else mask.to(device)
        positions = position_ids(mask)
        out = self.base_model(
            input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
            use_cache=True, logits_to_keep=1, **{CACHE_KWARG: stream.cache},
        )  # fmt: skip
        stream.ids = input_ids
        return out.logits[:, -1].float()

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.config.is_identity:  # γ = 0: exactly the RL model, and no base forward at all
            return scores
        stream = self._stream()
        if stream.prompt is None and bool(torch.isneginf(scores).any()):
            raise ValueError(
                "the RL scores reach DeltaLogpExtrapolation already masked by another processor (min_new_tokens, "
                "bad_words_ids, ...), which would act before extrapolation: call "
                "rl.generate(**proc.generate_kwargs(rl, **inputs, ...)), which runs them after it"
            )
        base = self.base_log_probs(input_ids).to(scores.device)
        width = shared_vocab_size(scores.shape[-1], base.shape[-1], self.tokenizer_size)
        where = f" at generation step {input_ids.shape[1] - stream.start}"
        check_finite_scores(scores[:, :width], "the RL model's logits", where)
        check_finite_scores(base[:, :width], "the base model's logits", where)
        logp, rates = combine(scores[:, :width], base[:, :width], self.config, self.generator, check=False)
        if rates is not None:
            # rows that have finished (their last token is padding or EOS) are not emitting anything
            active = ~torch.isin(input_ids[:, -1], self._stop_ids.to(input_ids.device)).to(logp.device)
            total, count = (torch.stack(rates) * active).sum(-1), active.sum()
            with self._lock:
                self._rate_sums = total if self._rate_sums is None else self._rate_sums + total
                self._steps = count if self._steps is None else self._steps + count
        if width == scores.shape[-1]:
            return logp
        return torch.cat([logp, logp.new_full((logp.shape[0], scores.shape[-1] - width), NEG_INF)], dim=-1)


def generate_arguments(model: PreTrainedModel, logits_processor: Any = (), **kwargs: Any) -> dict[str, Any]:
    """`generate`'s arguments for ``model`` with these logits processors: through the first
    `DeltaLogpExtrapolation` among them (`DeltaLogpExtrapolation.generate_kwargs`: it runs first, the rest after
    the call's penalties), or unchanged when there is none."""
    processors = list(logits_processor)
    proc = next((p for p in processors if isinstance(p, DeltaLogpExtrapolation)), None)
    if proc is None:
        return {**kwargs, "logits_processor": processors}
    return proc.generate_kwargs(model, logits_processor=[p for p in processors if p is not proc], **kwargs)


def known_keys() -> set[str]:
    """The attributes of a `GenerationConfig` (what `generate` takes as generation settings)."""
    return set(GenerationConfig().__dict__)
