"""The math of Δlog p extrapolation, on tensors of next-token scores (PAPER.md §2). No models here.

Every function works on the last dimension (the vocabulary) and accepts any leading shape. Inputs may be
raw logits or log-probabilities of any dtype; all arithmetic is done in float32, and masked (−inf) entries
never turn into NaN or +inf.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from transformers.generation.logits_process import TopPLogitsWarper

from .configuration import ExtrapolationConfig

NEG_INF = float("-inf")


class SelectionRates(NamedTuple):
    """Per-position chances of selective decoding, in closed form (expectations, not samples), shape ``[...]``.

    ``resampled`` is ``m = Σ_y π_P'(y) f(y)``: the proposal was flagged and redrawn from π_X'.
    ``changed`` is ``Σ_y π_P'(y) f(y) (1 − π_X'(y))``: the emitted token differs from the proposal (a redraw can
    return the proposed token, so ``changed ≤ resampled``).
    """

    resampled: Tensor
    changed: Tensor


def log_probs(scores: Tensor) -> Tensor:
    """``log_softmax`` in float32; a row that is entirely −inf stays −inf instead of becoming NaN."""
    scores = scores.float()
    return torch.log_softmax(scores, dim=-1).masked_fill(torch.isneginf(scores), NEG_INF)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy ``−Σ p log p`` of normalised log-probabilities (0 · log 0 = 0)."""
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)


def kl_divergence(logp_p: Tensor, logp_q: Tensor) -> Tensor:
    """``KL(p‖q) = Σ p (log p − log q)`` of normalised log-probabilities; +inf where p > 0 and q = 0."""
    p = logp_p.exp()
    diff = (logp_p - logp_q).masked_fill(p == 0, 0.0)
    return (p * diff).sum(-1)


def extrapolated_log_probs(logp_rl: Tensor, logp_base: Tensor, weights: tuple[float, float]) -> Tensor:
    """``log_softmax(w_rl · log π_RL + w_base · log π_base)``: the full-vocabulary extrapolated policy π_X.

    Tokens the RL side masks (−inf) stay masked. Where only the base side is −inf, its log-prob is taken
    as the smallest finite base log-prob of the row, so a negative base weight cannot produce +inf.
    """
    w_base, w_rl = weights
    inf = torch.inf
    floor = logp_base.nan_to_num(nan=inf, posinf=inf, neginf=inf).amin(-1, keepdim=True)  # smallest finite
    base = logp_base.nan_to_num(nan=-inf, posinf=-inf, neginf=-inf).clamp(min=floor)  # non-finite -> floor
    mixed = logp_rl * w_rl + base * w_base
    return log_probs(mixed.masked_fill(torch.isneginf(logp_rl), NEG_INF))


def sampling_log_probs(logp: Tensor, temperature: float, top_p: float) -> Tensor:
    """The distribution a sampler with this temperature and top-p draws from, as log-probabilities.

    Uses `transformers`' own top-p rule, so the result is what `generate` would sample; temperature 0 gives
    the one-hot distribution of the argmax.
    """
    if temperature == 0:
        return torch.full_like(logp, NEG_INF).scatter_(-1, logp.argmax(-1, keepdim=True), 0.0)
    scaled = logp if temperature == 1 else logp / temperature
    if top_p < 1.0:
        flat = scaled.reshape(-1, scaled.shape[-1])
        scaled = TopPLogitsWarper(top_p)(None, flat).reshape(scaled.shape)
    return log_probs(scaled)


def _aligned(logp: Tensor, k: int) -> Tensor:
    """``logp`` as the reference code sees it through a top-k list: exact on its own top-k tokens, the
    smallest of those top-k log-probs everywhere else."""
    vals, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    in_top = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(in_top, logp, vals[..., -1:])


def _top_k_view(logp_a: Tensor, logp_b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The reference code's top-k view: ``a`` on its own top-k tokens and ``b`` aligned to them (see
    `_aligned`), both −inf elsewhere. Returns un-normalised log-probs."""
    idx = logp_a.topk(min(k, logp_a.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(logp_a, dtype=torch.bool).scatter_(-1, idx, True)
    return logp_a.masked_fill(~keep, NEG_INF), _aligned(logp_b, k).masked_fill(~keep, NEG_INF)


def _flags(logp_rl: Tensor, logp_base: Tensor, delta: Tensor, config: ExtrapolationConfig) -> Tensor:
    """Per-token flag probabilities ``f(y) ∈ [0, 1]`` (shape ``[..., V]`` or ``[..., 1]``) for ``config.select``."""
    select, tau = config.select, config.threshold
    k = config.candidate_top_k
    if select in ("delta_logp", "delta_logp_ge"):
        # the comparison with a finite τ already rules out NaN, and +inf (for <=) or −inf (for >=)
        if select == "delta_logp":
            return ((delta <= tau) & ~torch.isneginf(delta)).float()
        return ((delta >= tau) & ~torch.isposinf(delta)).float()
    if select in ("base_entropy", "rl_entropy"):
        logp = logp_base if select == "base_entropy" else logp_rl
        if k is not None:
            logp = log_probs(_top_k_view(logp, logp, k)[0])
        return (entropy(logp) >= tau).float().unsqueeze(-1)
    if select in ("kl", "reverse_kl", "js"):

        def kl(p: Tensor, q: Tensor) -> Tensor:
            if k is not None:
                p, q = (log_probs(t) for t in _top_k_view(p, q, k))
            return kl_divergence(p, q)

        kl_rb = kl(logp_rl, logp_base) if select in ("kl", "js") else 0.0
        kl_br = kl(logp_base, logp_rl) if select in ("reverse_kl", "js") else 0.0
        stat = {"kl": kl_rb, "reverse_kl": kl_br, "js": 0.5 * (kl_rb + kl_br)}[select]
        return (stat >= tau).float().unsqueeze(-1)
    value = {"random": tau, "all": 1.0, "none": 0.0}[select]
    return torch.full_like(logp_rl[..., :1], value)


def combine(
    rl_scores: Tensor, base_scores: Tensor, config: ExtrapolationConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, SelectionRates | None]:
    """Next-token log-probabilities of extrapolated decoding, and (selective mode) the resample/change rates.

    Args:
        rl_scores: RL-model logits or log-probs, ``[..., V]`` (already cut to the shared vocabulary).
        base_scores: base-model logits or log-probs, same shape.
        config: the settings.
        generator: random source for the greedy ``random`` criterion.

    Tokens that ``rl_scores`` masks with −inf (other logits processors) are masked on the base side as well,
    so no mode can emit them. Full mode returns ``log π_X'`` (π_X after the config's temperature and top-p)
    and ``None``.
    Selective mode returns the log of the two-stage sampler's exact distribution

        P(y) = π_P'(y) · (1 − f(y)) + m · π_X'(y),   m = Σ_x π_P'(x) f(x),

    where π_P' is the proposer after temperature and top-p and f the flag probability; and the
    `SelectionRates` of that step. With temperature 0 it returns the one-hot distribution of the greedy
    algorithm: the proposer's argmax, or π_X's argmax where flagged.
    """
    # tokens the RL scores mask (other processors: min_new_tokens, bad words, ...) are masked for the base too
    base_scores = base_scores.float().masked_fill(torch.isneginf(rl_scores), NEG_INF)
    logp_rl, logp_base = log_probs(rl_scores), log_probs(base_scores)
    if config.select is None:
        return sampling_log_probs(
            extrapolated_log_probs(logp_rl, logp_base, config.model_weights), config.temperature, config.top_p
        ), None

    k = config.candidate_top_k

    def to_rl_base(prop: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:  # a swap, so its own inverse
        return (other, prop) if config.proposer == "base" else (prop, other)

    logp_prop, logp_other = to_rl_base(logp_rl, logp_base)
    if k is None:
        view_rl, view_base = logp_rl, logp_base
        delta = logp_rl - logp_base
    else:  # π_X lives on the proposer's top-k; the proposal itself still comes from the full distribution
        view_rl, view_base = to_rl_base(*_top_k_view(logp_prop, logp_other, k))
        delta_rl, delta_base = to_rl_base(logp_prop, _aligned(logp_other, k))
        delta = delta_rl - delta_base
    logp_x = extrapolated_log_probs(log_probs(view_rl), log_probs(view_base), config.model_weights)
    flag = _flags(logp_rl, logp_base, delta, config)  # [..., V] or [..., 1]: broadcast, never expanded

    if config.temperature == 0:
        proposal = logp_prop.argmax(-1, keepdim=True)
        f = flag.expand_as(logp_prop).gather(-1, proposal)
        if config.select == "random":
            f = (torch.rand(f.shape, generator=generator, device=f.device) < f).float()
        redraw = logp_x.argmax(-1, keepdim=True)
        choice = torch.where(f > 0, redraw, proposal)
        changed = f * (redraw != proposal)
        return torch.full_like(logp_prop, NEG_INF).scatter_(-1, choice, 0.0), SelectionRates(
            f.squeeze(-1), changed.squeeze(-1)
        )

    p_prop = sampling_log_probs(logp_prop, config.temperature, config.top_p).exp()
    p_x = sampling_log_probs(logp_x, config.temperature, config.top_p).exp()
    flagged = p_prop * flag
    m = flagged.sum(-1, keepdim=True)
    mixture = p_prop * (1.0 - flag) + p_x * m
    changed = (flagged * (1.0 - p_x)).sum(-1)
    return mixture.log(), SelectionRates(m.squeeze(-1), changed)
