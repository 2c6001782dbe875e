"""Per-token statistics of an RL/base pair on given sequences (docs/PAPER.md §1), and sampling the sequences.

Everything is teacher-forced and batched: both models read the whole sequences once, with position ids
built from the attention mask, so left- and right-padded batches give the per-row values. The models'
logits are cut to the shared vocabulary width and renormalised there, as the decoding processor does.
A value at position ``t`` describes token ``t`` (predicted from the tokens before it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LogitsProcessor, PreTrainedModel

from ..configuration import ExtrapolationConfig
from ..extrapolation import combine, entropy, kl_divergence, log_probs, shared_vocab_size
from ..loading import model_device
from ..processor import generate_arguments, position_ids

# the statistics of `token_statistics`, in plotting order
METRICS = ("delta_logp", "base_entropy", "rl_entropy", "kl", "reverse_kl", "js")
LABELS = {
    "delta_logp": "Δlog p = log π_RL(y) − log π_base(y)",
    "base_entropy": "entropy of π_base",
    "rl_entropy": "entropy of π_RL",
    "kl": "KL(π_RL ‖ π_base)",
    "reverse_kl": "KL(π_base ‖ π_RL)",
    "js": "(KL + reverse KL) / 2",
    "random": "random",
}

# fn(rl_scores [B, c, V], base_scores [B, c, V], tokens [B, c]) -> {name: [B, c]}
PositionFn = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]


def _logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, keep: int) -> Tensor:
    device = model_device(model)
    return model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
        position_ids=position_ids(attention_mask).to(device), logits_to_keep=keep, use_cache=False,
    ).logits  # fmt: skip


@torch.no_grad()
def teacher_forced(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    fn: PositionFn,
    *,
    vocab_size: int | None = None,
    chunk_elements: int = 2**25,
) -> dict[str, Tensor]:
    """Run both models over ``input_ids`` and apply ``fn`` at every position that predicts a scored token.

    Only the logits from the first scored position on are materialised (``logits_to_keep``), and ``fn``
    sees them in chunks of about ``chunk_elements`` floats per model. Returns ``{name: [B, T, ...]}`` float32
    on the CPU (``fn`` may give each position several values, e.g. a top-k), NaN at position 0, at padding and
    where ``score_mask`` is false.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [batch, length] with length >= 2, got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    score = score_mask.bool() & attention_mask.bool()
    score[:, 0] = False
    scored_columns = score.any(0).nonzero()
    first = int(scored_columns[0]) if len(scored_columns) else length - 1
    keep = length - first + 1  # logits at positions first-1 .. length-1; the last one predicts nothing
    rl = _logits(rl_model, input_ids, attention_mask, keep)[:, :-1]
    base = _logits(base_model, input_ids, attention_mask, keep)[:, :-1].to(rl.device)
    width = shared_vocab_size(rl.shape[-1], base.shape[-1], vocab_size)
    tokens = input_ids[:, first:].to(rl.device)
    step = max(1, chunk_elements // (batch * width))
    parts = [
        fn(rl[:, s : s + step, :width], base[:, s : s + step, :width], tokens[:, s : s + step])
        for s in range(0, length - first, step)
    ]
    out = {}
    for name in parts[0]:
        joined = torch.cat([p[name] for p in parts], dim=1).float().cpu()
        values = torch.full((batch, length, *joined.shape[2:]), math.nan)
        values[:, first:] = joined
        unscored = ~score.cpu().reshape(batch, length, *[1] * (joined.dim() - 2))
        out[name] = values.masked_fill(unscored, math.nan)
    return out


def token_log_probs(logp: Tensor, tokens: Tensor) -> Tensor:
    """``logp`` (``[..., vocab]``) at each of ``tokens`` (``[...]``); NaN for a token beyond the shared vocabulary
    (a padding row a model may emit), which has no log-prob there."""
    inside = tokens < logp.shape[-1]
    index = tokens.clamp(max=logp.shape[-1] - 1).unsqueeze(-1)
    return logp.gather(-1, index).squeeze(-1).masked_fill(~inside, math.nan)


def _statistics(rl_scores: Tensor, base_scores: Tensor, tokens: Tensor) -> dict[str, Tensor]:
    logp_rl, logp_base = log_probs(rl_scores), log_probs(base_scores)
    kl, reverse_kl = kl_divergence(logp_rl, logp_base), kl_divergence(logp_base, logp_rl)
    return {
        "delta_logp": token_log_probs(logp_rl, tokens) - token_log_probs(logp_base, tokens),
        "base_entropy": entropy(logp_base),
        "rl_entropy": entropy(logp_rl),
        "kl": kl,
        "reverse_kl": reverse_kl,
        "js": 0.5 * (kl + reverse_kl),
    }


def token_statistics(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    score_mask: Tensor | None = None,
    *,
    vocab_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-token statistics of two models on the same sequences, ``{metric: [B, T]}`` (see `METRICS`).

    ``delta_logp`` is Δlog p of the actual token; ``base_entropy`` / ``rl_entropy`` the entropy of each
    model's next-token distribution; ``kl`` is KL(π_RL‖π_base), ``reverse_kl`` KL(π_base‖π_RL) and ``js``
    their average (the reference code's "JS"). ``score_mask`` (default: every non-padding token) chooses the
    tokens to score, e.g. the response; other positions are NaN. ``vocab_size`` is the tokenizer length,
    so that padding rows of the embedding matrices are cut.

    Example:

    ```python
    >>> stats = token_statistics(rl, base, batch["input_ids"], batch["attention_mask"], vocab_size=len(tok))
    >>> stats["delta_logp"][0]  # Δlog p of each token of the first sequence
    ```
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if score_mask is None:
        score_mask = attention_mask.bool()
    return teacher_forced(
        rl_model, base_model, input_ids, attention_mask, score_mask, _statistics, vocab_size=vocab_size
    )


def replacement_probability(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    config: ExtrapolationConfig,
    *,
    vocab_size: int | None = None,
) -> Tensor:
    """``[B, T]``: the chance that selective decoding with ``config`` resampled the token at each position.

    This is the core's ``m`` (`combine`'s ``resampled``), recomputed teacher-forced on the emitted sequences,
    so its mean over the response tokens is the processor's `resample_rate`.
    """
    if config.select is None:
        raise ValueError("replacement_probability needs a selective config (select set)")
    return teacher_forced(
        rl_model, base_model, input_ids, attention_mask, score_mask,
        lambda rl, base, _: {"m": combine(rl, base, config)[1].resampled}, vocab_size=vocab_size,
    )["m"]  # fmt: skip


@dataclass
class Responses:
    """One batch of sampled responses: prompts left-padded, then the generated tokens."""

    sequences: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]: the prompt's mask, then 1 up to and including the first EOS
    response_mask: Tensor  # [N, T] bool: generated tokens up to and including the first EOS
    completions: list[str]  # the decoded responses (special tokens skipped)

    def teacher_forcing(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids, attention_mask, score_mask)`` for `token_statistics` and `replacement_probability`."""
        return self.sequences, self.attention_mask, self.response_mask


def eos_token_ids(*models: PreTrainedModel) -> list[int]:
    """Every end-of-sequence id in the models' generation configs, so that all runs stop at the same ids."""
    ids: set[int] = set()
    for model in models:
        eos = model.generation_config.eos_token_id
        ids.update([eos] if isinstance(eos, int) else eos or [])
    return sorted(ids)


def until_first(tokens: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """``[N, L]`` bool: true up to and including the first stop token of each row."""
    stop = torch.isin(tokens, torch.tensor(list(stop_ids), dtype=tokens.dtype, device=tokens.device)).long()
    return (stop.cumsum(-1) - stop) == 0


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    eos_token_id: Sequence[int] = (),
    logits_processor: Sequence[LogitsProcessor] = (),
    desc: str = "generate",
) -> list[Responses]:
    """``samples`` responses per prompt (rows in prompt order), ``batch_size`` prompts per `generate` call.

    ``temperature=0`` is greedy; otherwise sampling with no top-k. The global torch seed is set once, so two
    runs that draw from the same distributions draw the same tokens. With a selective logits processor,
    give the temperature and top-p to the processor and leave them at 1.0 here (0 for greedy).
    """
    add_special = getattr(tokenizer, "chat_template", None) is None  # a chat template already has them
    eos = list(eos_token_id) or eos_token_ids(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else {}
    rows = [p for p in prompts for _ in range(samples)]  # greedy generate refuses num_return_sequences > 1
    torch.manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(rows), batch_size * samples), desc=desc, leave=False):
        enc = tokenizer(
            rows[start : start + batch_size * samples], return_tensors="pt", padding=True, padding_side="left",
            add_special_tokens=add_special,
        )  # fmt: skip
        ids = model.generate(**generate_arguments(
            model, logits_processor, **enc.to(model_device(model)), max_new_tokens=max_new_tokens, eos_token_id=eos,
            pad_token_id=pad, **(sampling or dict(do_sample=False)),
        )).cpu()  # fmt: skip
        prompt_length = enc["input_ids"].shape[1]
        new = ids[:, prompt_length:]
        valid = until_first(new, eos)
        prompt_mask = enc["attention_mask"].cpu()
        out.append(
            Responses(
                sequences=ids,
                attention_mask=torch.cat([prompt_mask, valid.long()], dim=1),
                response_mask=torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), valid], dim=1),
                completions=tokenizer.batch_decode(new.masked_fill(~valid, pad), skip_special_tokens=True),
            )
        )
    return out


def pooled(batches: Sequence[Responses], per_batch: Sequence[dict[str, Tensor]]) -> dict[str, np.ndarray]:
    """The finite values of each statistic over every response token of every batch, as flat arrays."""
    names = per_batch[0].keys() if per_batch else ()
    out = {}
    for name in names:
        values = torch.cat([s[name][b.response_mask] for b, s in zip(batches, per_batch, strict=True)])
        out[name] = values[torch.isfinite(values)].numpy()
    return out


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the two empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return math.nan
    grid = np.concatenate([a, b])
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def describe(values: np.ndarray) -> dict[str, float]:
    """Count, mean, standard deviation and a few quantiles of a flat array."""
    if len(values) == 0:
        return {"n": 0}
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        **{f"q{round(q * 100):02d}": float(v) for q, v in zip(qs, np.quantile(values, qs))},
    }
