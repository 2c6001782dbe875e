"""`DeltaLogpExtrapolation`: a `transformers` logits processor that brings the base model into `generate`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, LogitsProcessor, PreTrainedModel

from .configuration import ExtrapolationConfig
from .extrapolation import NEG_INF, combine


def model_device(model: PreTrainedModel) -> torch.device:
    """Where a (possibly sharded) model takes its inputs: the device of its input embeddings."""
    return model.get_input_embeddings().weight.device


def shared_vocab_size(*sizes: int | None) -> int:
    """The vocabulary both models can emit: the smallest of the logits widths and the tokenizer length."""
    return min(s for s in sizes if s is not None)


class DeltaLogpExtrapolation(LogitsProcessor):
    r"""Extrapolate the model being generated from (the RL model) away from a base model, along Δlog p.

    Full mode (``select=None``) returns, for every token,

        log π_X(y) = (1 + γ) · log π_RL(y) − γ · log π_base(y) − log Z,

    so γ = 0 is exactly the RL model. Selective mode (``select="delta_logp"``, ``threshold=τ``) returns the
    exact distribution of the paper's two-stage sampler: the base model proposes ``y`` with this processor's
    ``temperature`` and ``top_p``; if ``Δlog p(y) ≤ τ`` the token is resampled from π_X. Sample from it in
    `generate` with ``temperature=1.0, top_p=1.0``; ``temperature=0`` here gives the paper's greedy variant.
    See `ExtrapolationConfig` for every setting.

    The base model keeps its own KV cache across steps and is fed only the new tokens. Each call checks the
    rows of ``input_ids`` against what it has cached: a continuation is fed incrementally, rows reordered
    by beam search reorder the cache, and anything else (a new prompt, assisted-decoding rollback) crops or
    rebuilds it, so one processor can be reused across `generate` calls. Left padding is read from
    ``input_ids`` (leading ``pad_token_id`` tokens), as logits processors do not see the attention mask.

    In selective mode `resample_rate` is the mean probability that an emitted token was redrawn from π_X, and
    `changed_rate` the mean probability that it differs from the proposal (a redraw may return the proposed
    token), both in closed form over the rows still generating at every step since construction or `reset()`.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
    >>> from hf_extrapolate import DeltaLogpExtrapolation
    >>> tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-32B")
    >>> base = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-32B", dtype="auto", device_map="auto")
    >>> rl = AutoModelForCausalLM.from_pretrained("BytedTsinghua-SIA/DAPO-Qwen-32B", dtype="auto", device_map="auto")
    >>> proc = DeltaLogpExtrapolation(base, gamma=0.05, select="delta_logp", threshold=-0.3, top_p=0.7, tokenizer=tok)
    >>> enc = tok(["What is 2 + 3?"], return_tensors="pt").to(rl.device)
    >>> out = rl.generate(**enc, logits_processor=LogitsProcessorList([proc]), do_sample=True, top_p=1.0)
    ```
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        gamma: float = 0.0,
        *,
        weights: tuple[float, float] | None = None,
        select: str | None = None,
        threshold: float | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        proposer: str = "base",
        candidate_top_k: int | None = None,
        tokenizer: Any = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(base_model, PreTrainedModel):
            raise ValueError(f"base_model must be a transformers PreTrainedModel, got {type(base_model).__name__}")
        self.config = ExtrapolationConfig(
            gamma=gamma, weights=weights, select=select, threshold=threshold, temperature=temperature,
            top_p=top_p, proposer=proposer, candidate_top_k=candidate_top_k,
        )  # fmt: skip
        self.base_model = base_model
        self.tokenizer_size = len(tokenizer) if tokenizer is not None else None
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = base_model.generation_config.pad_token_id
        self.pad_token_id = pad_token_id
        eos = getattr(tokenizer, "eos_token_id", None) or base_model.generation_config.eos_token_id
        stops = [t for t in [pad_token_id, *(eos if isinstance(eos, list) else [eos])] if t is not None]
        self._stop_ids = torch.tensor(stops or [-1])
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Drop the base model's cache and the flag statistics (the cache is also rebuilt automatically
        whenever the prompt changes)."""
        self._cache: DynamicCache | None = None
        self._ids: Tensor | None = None  # the token ids the cache holds, [batch, length]
        self._rate_sums: Tensor | None = None  # [resampled, changed], summed over emitting rows and steps
        self._steps: Tensor | None = None

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

    def _sync(self, input_ids: Tensor) -> int:
        """Make the cache a prefix of ``input_ids``; return the position from which tokens must be fed."""
        cached = self._ids
        if cached is None or cached.shape[0] != input_ids.shape[0]:
            self._cache = DynamicCache(config=self.base_model.config)
            return 0
        n = min(cached.shape[1], input_ids.shape[1])
        same = cached[:, :n] == input_ids[:, :n]
        if not bool(same.all()):  # one host sync per step; generate itself syncs on stopping criteria anyway
            match = (input_ids[:, None, :n] == cached[None, :, :n]).all(-1)  # [new row, cached row]
            if bool(match.any(-1).all()):  # beam search reordered (and duplicated) rows
                beam_idx = match.int().argmax(-1)
                self._cache.reorder_cache(beam_idx.to(model_device(self.base_model)))
                self._ids = cached = cached[beam_idx]
            else:
                n = int(same.all(0).int().cumprod(0).sum())  # longest prefix common to every row
        n = min(n, input_ids.shape[1] - 1)  # always feed at least one token
        if n == 0:
            self._cache = DynamicCache(config=self.base_model.config)
        elif n < cached.shape[1]:
            self._cache.crop(n - cached.shape[1])
        return n

    @torch.no_grad()
    def base_log_probs(self, input_ids: Tensor) -> Tensor:
        """The base model's next-token logits for every row of ``input_ids``, ``[batch, vocab_base]`` float32."""
        start = self._sync(input_ids)
        device = model_device(self.base_model)
        ids = input_ids.to(device)
        mask = (ids != self.pad_token_id).cumsum(-1) > 0 if self.pad_token_id is not None else torch.ones_like(ids)
        mask = mask.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.base_model(
            input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
            cache=self._cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        self._ids = input_ids
        return out.logits[:, -1].float()

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.config.is_identity:  # γ = 0: exactly the RL model, and no base forward at all
            return scores
        base = self.base_log_probs(input_ids).to(scores.device)
        width = shared_vocab_size(scores.shape[-1], base.shape[-1], self.tokenizer_size)
        logp, rates = combine(scores[:, :width], base[:, :width], self.config, self.generator)
        if rates is not None:
            # rows that have finished (their last token is padding or EOS) are not emitting anything
            active = ~torch.isin(input_ids[:, -1], self._stop_ids.to(input_ids.device)).to(logp.device)
            total, count = (torch.stack(rates) * active).sum(-1), active.sum()
            self._rate_sums = total if self._rate_sums is None else self._rate_sums + total
            self._steps = count if self._steps is None else self._steps + count
        if width == scores.shape[-1]:
            return logp
        return torch.cat([logp, logp.new_full((logp.shape[0], scores.shape[-1] - width), NEG_INF)], dim=-1)
