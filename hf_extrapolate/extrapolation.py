"""The math of Δlog p extrapolation, on tensors of next-token scores (docs/PAPER.md §2). No models here.

Every function works on the last dimension (the vocabulary) and accepts any leading shape. Inputs may be
raw logits or log-probabilities of any float dtype (float16 and bfloat16 are upcast first); all arithmetic is
done in float32. What each input gives:

- −inf is a mask: the token does not exist for that model. Tokens the RL scores mask are never emitted.
- NaN and +inf are refused by `combine` with a ValueError naming the side (`check_finite_scores` is the same
  check, for callers that can name the model and the step).
- Extreme finite magnitudes: log-probabilities are floored at ``LOGP_FLOOR = −2**23`` (float32 resolves no
  finer than one nat below it), so a finite score always stays a finite log-prob and, with the weight bounds of
  `ExtrapolationConfig`, every weighted sum stays below 2**127 < FLT_MAX.
- A row the RL side masks entirely has nothing to emit: `combine` refuses it. Where the base side masks a
  token the RL side allows, its log-prob counts as the smallest finite base log-prob of the row (a constant,
  which cancels, if it has none); in selective mode the base side must allow some token the RL side allows.
- Temperature divides log-probs shifted to a row maximum of 0, so any temperature > 0 is finite (small ones
  underflow to probability 0, as they should); temperature 0 is the one-hot argmax.

Outputs are float32 log-probabilities that are normalised (logsumexp 0 up to rounding), never NaN, never +inf.

One file for the math: `combine` and the two candidate-list forms it dispatches to share the flags, the
floors and the tempering above, and the formulas read in one place.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from transformers.generation.logits_process import TopPLogitsWarper

from .configuration import LOGP_FLOOR, ExtrapolationConfig

NEG_INF = float("-inf")
# reference mode: most (proposal list, padding) pairs × list entries summed over per position before it refuses
MAX_REFERENCE_ELEMENTS = 2**26
_CHUNK_ELEMENTS = 2**22


class SelectionRates(NamedTuple):
    """Per-position chances of selective decoding, in closed form (expectations, not samples), shape ``[...]``.

    ``resampled`` is ``m = Σ_y π_P'(y) f(y)``: the proposal was flagged and redrawn from π_X'.
    ``changed`` is ``Σ_y π_P'(y) f(y) (1 − π_X'(y))``: the emitted token differs from the proposal (a redraw can
    return the proposed token, so ``changed ≤ resampled``).
    """

    resampled: Tensor
    changed: Tensor


def check_finite_scores(scores: Tensor, who: str, where: str = "") -> None:
    """Raise a ValueError if ``scores`` hold NaN or +inf (−inf is a mask and is fine).

    ``who`` names the source in the message (e.g. ``"the base model's logits"``), ``where`` the step or positions
    (e.g. ``" at generation step 7"``).
    """
    top = scores.amax(-1) if scores.numel() else scores.new_zeros(())  # NaN and +inf both reach the maximum
    if not (top.isnan() | top.isposinf()).any():
        return
    bad = scores.isnan() | scores.isposinf()
    first = tuple(bad.nonzero()[0].tolist())
    kind = " and ".join(name for name, hit in (("NaN", scores.isnan()), ("+inf", scores.isposinf())) if hit.any())
    raise ValueError(
        f"{who}{where} hold {kind} ({int(bad.sum())} scores, the first at index {first}); only finite scores and "
        "-inf masks can be combined: check that model's dtype and weights (e.g. a float16 overflow or a NaN lm_head)"
    )


def log_probs(scores: Tensor) -> Tensor:
    """``log_softmax`` in float32, finite entries floored at ``LOGP_FLOOR``; −inf stays −inf, and a row that is
    entirely −inf stays −inf instead of becoming NaN."""
    x = scores if scores.dtype == torch.float64 else scores.float()  # float64 is normalised before its cast
    return torch.log_softmax(x, dim=-1).clamp(min=LOGP_FLOOR).float().masked_fill(torch.isneginf(scores), NEG_INF)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy ``−Σ p log p`` of normalised log-probabilities (0 · log 0 = 0)."""
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)


def kl_divergence(logp_p: Tensor, logp_q: Tensor) -> Tensor:
    """``KL(p‖q) = Σ p (log p − log q)`` of normalised log-probabilities; +inf where p > 0 and q = 0."""
    p = logp_p.exp()
    diff = (logp_p - logp_q).masked_fill(p == 0, 0.0)
    return (p * diff).sum(-1)


def _base_floor(logp_base: Tensor) -> Tensor:
    """The base log-probs with −inf replaced by the row's smallest finite one (0 if there is none: a constant
    cancels in every use); used only where the RL side allows the token."""
    return logp_base.clamp(min=logp_base.nan_to_num(neginf=0.0).amin(-1, keepdim=True))


def extrapolated_log_probs(logp_rl: Tensor, logp_base: Tensor, weights: tuple[float, float]) -> Tensor:
    """``log_softmax(w_rl · log π_RL + w_base · log π_base)``: the full-vocabulary extrapolated policy π_X.

    Inputs are log-probabilities as `log_probs` returns them. Tokens the RL side masks (−inf) stay masked;
    where only the base side is −inf, its log-prob is the smallest finite base log-prob of the row, so a negative
    base weight cannot produce +inf.
    """
    w_base, w_rl = weights
    mixed = logp_rl * w_rl + _base_floor(logp_base) * w_base  # NaN or ±inf only where the RL side masks
    return log_probs(torch.where(torch.isneginf(logp_rl), NEG_INF, mixed))


def sampling_log_probs(logp: Tensor, temperature: float, top_p: float) -> Tensor:
    """The distribution a sampler with this temperature and top-p draws from, as log-probabilities.

    ``logp`` are log-probs or any scores with −inf masks. Uses `transformers`' own top-p rule (which is also
    vLLM's), so the result is what `generate` would sample; temperature 0 gives the one-hot distribution of the
    argmax. A row with no finite entry stays all −inf.
    """
    top = logp.amax(-1, keepdim=True)
    if temperature == 0:
        one_hot = torch.full_like(logp, NEG_INF).scatter_(-1, logp.argmax(-1, keepdim=True), 0.0)
        return one_hot.masked_fill(torch.isneginf(top), NEG_INF)
    scaled = logp - top.nan_to_num(neginf=0.0)  # the row maximum is exactly 0: dividing can only underflow
    if temperature != 1:
        scaled = scaled / temperature
    if top_p < 1.0:
        flat = scaled.reshape(-1, scaled.shape[-1])
        scaled = TopPLogitsWarper(top_p)(None, flat).reshape(scaled.shape)
    return log_probs(scaled)


def _flags(logp_rl: Tensor, logp_base: Tensor, delta: Tensor, config: ExtrapolationConfig) -> Tensor:
    """Full-vocabulary flag probabilities ``f(y) ∈ [0, 1]`` (shape ``[..., V]`` or ``[..., 1]``)."""
    select, tau = config.select, config.threshold
    if select == "delta_logp":
        return (delta <= tau).float()
    if select == "delta_logp_ge":
        return (delta >= tau).float()
    if select in ("base_entropy", "rl_entropy"):
        return (entropy(logp_base if select == "base_entropy" else logp_rl) >= tau).float().unsqueeze(-1)
    if select in ("kl", "reverse_kl", "js"):
        kl_rb = kl_divergence(logp_rl, logp_base) if select in ("kl", "js") else 0.0
        kl_br = kl_divergence(logp_base, logp_rl) if select in ("reverse_kl", "js") else 0.0
        stat = {"kl": kl_rb, "reverse_kl": kl_br, "js": 0.5 * (kl_rb + kl_br)}[select]
        return (stat >= tau).float().unsqueeze(-1)
    value = {"random": tau, "all": 1.0, "none": 0.0}[select]
    return torch.full_like(logp_rl[..., :1], value)


def _list_flags(lists: dict[str, Tensor], config: ExtrapolationConfig) -> Tensor:
    """Reference-mode flags of the position criteria, from each model's list and the other model aligned to it.

    ``lists`` holds, per model (``rl``, ``base``): ``X`` its own list (log-probs renormalised over the list) and
    ``X_aligned`` the other model aligned to the list of ``X`` (renormalised too), broadcastable shapes.
    """
    select, tau = config.select, config.threshold
    if select in ("base_entropy", "rl_entropy"):
        return (entropy(lists["base" if select == "base_entropy" else "rl"]) >= tau).float()
    kl_rb = kl_divergence(lists["rl"], lists["rl_aligned"])  # KL(RL‖base) over RL's list, as the reference does
    kl_br = kl_divergence(lists["base"], lists["base_aligned"])
    return ({"kl": kl_rb, "reverse_kl": kl_br, "js": 0.5 * (kl_rb + kl_br)}[select] >= tau).float()


def _greedy_random(flag: Tensor, config: ExtrapolationConfig, generator: torch.Generator | None) -> Tensor:
    """At temperature 0 the ``random`` criterion is drawn once per position, so that the output stays one-hot."""
    if config.temperature == 0 and config.select == "random":
        return (torch.rand(flag.shape, generator=generator, device=flag.device) < flag).float()
    return flag


def _full_vocabulary(
    logp_rl: Tensor, logp_base: Tensor, config: ExtrapolationConfig, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Selective mode over the whole vocabulary: ``(mixture, resampled, changed)`` as probabilities."""
    logp_prop = logp_base if config.proposer == "base" else logp_rl
    delta = (logp_rl - _base_floor(logp_base)).masked_fill(torch.isneginf(logp_rl), 0.0)  # masked: never proposed
    flag = _greedy_random(_flags(logp_rl, logp_base, delta, config), config, generator)
    logp_x = extrapolated_log_probs(logp_rl, logp_base, config.model_weights)
    p_prop = sampling_log_probs(logp_prop, config.temperature, config.top_p).exp()
    p_x = sampling_log_probs(logp_x, config.temperature, config.top_p).exp()
    flagged = p_prop * flag
    m = flagged.sum(-1)
    return p_prop * (1.0 - flag) + p_x * m.unsqueeze(-1), m, (flagged * (1.0 - p_x)).sum(-1)


def _outside(p: Tensor, inside: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The tokens a sampler draws with positive probability outside its top-k: ``(prob, index, valid)``, each
    ``[N, n]`` with ``n`` the widest row (padding has probability 0 and ``valid`` False)."""
    out = (p > 0) & ~inside
    n = int(out.sum(-1).max())
    prob, idx = (p * out).topk(n, dim=-1)
    return prob, idx, prob > 0


def _reference_lists(
    logp_rl: Tensor, logp_base: Tensor, config: ExtrapolationConfig, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Selective mode with the reference code's candidate lists: ``(mixture, resampled, changed)``, ``[N, V]`` in.

    P is the proposer, O the other model; ``ℓ`` their log-probs; ``T_P``, ``T_O`` their top-k. The proposal
    ``y ~ π_P'`` and O's own sample ``z ~ π_O'`` (independent) make the lists ``L_P = T_P ∪ {y}`` and
    ``L_O = T_O ∪ {z}``. A model's missing entries take the smallest log-prob of its list, which for O is
    ``s = min(ℓ_O(k-th), ℓ_O(z))``; since ``ℓ_O(z) = s`` when ``z ∉ T_O``, O aligned to any token ``c`` is
    ``a(c) = ℓ_O(c)`` for ``c ∈ T_O`` and ``s`` otherwise: z enters only through s. The emitted distribution is

        P(e) = Σ_y π_P'(y) Σ_s q(s) [(1 − f(y, s)) [e = y] + f(y, s) π_X'(e | L_P, s)],

    π_X'(· | L_P, s) being ``softmax((w_P ℓ_P + w_O a) / T)`` on ``L_P`` after top-p, q(s) the law of s
    (``π_O'(T_O)`` for the k-th value, ``π_O'(z)`` for each ``z ∉ T_O``). Proposals inside ``T_P`` share one
    list, and each proposal outside it adds one token: the sum runs over (1 + #outside proposals) lists ×
    (1 + #outside z) pads, vectorised and chunked over s. (The reference also passes one seed to both engines at
    every step, which couples their draws; that belongs to its vLLM setup, not to the method, and is not
    reproduced: y and z are independent here.)
    """
    n_rows, vocab = logp_rl.shape
    k = min(config.candidate_top_k, vocab)
    temperature, top_p, tau = config.temperature, config.top_p, config.threshold
    w_base, w_rl = config.model_weights
    prop_is_base = config.proposer == "base"
    lp_p, lp_o = (logp_base, logp_rl) if prop_is_base else (logp_rl, logp_base)
    w_p, w_o = (w_base, w_rl) if prop_is_base else (w_rl, w_base)

    pp = sampling_log_probs(lp_p, temperature, top_p).exp()  # the engines' own sampling distributions
    po = sampling_log_probs(lp_o, temperature, top_p).exp()

    def top_list(lp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        idx = lp.topk(k, dim=-1).indices.sort(-1).values  # in token order: greedy ties go to the smallest id
        val = lp.gather(-1, idx)
        ok = torch.isfinite(val)  # a masked token is on no list
        inside = torch.zeros_like(lp, dtype=torch.bool).scatter_(-1, idx, ok)
        kth = val.masked_fill(~ok, torch.inf).amin(-1, keepdim=True)
        return val, idx, inside, kth

    tp_val, tp_idx, in_tp, v_p = top_list(lp_p)
    to_val, to_idx, in_to, v_o = top_list(lp_o)
    y_prob, y_idx, y_ok = _outside(pp, in_tp)  # [N, Y]: proposals that add a token to the proposer's list
    z_prob, z_idx, z_ok = _outside(po, in_to)  # [N, Z]: O's samples that lower its padding value
    n_y, n_z = y_idx.shape[1], z_idx.shape[1]
    if (1 + n_z) * (1 + n_y) * (k + 1) > MAX_REFERENCE_ELEMENTS:
        raise ValueError(
            f"candidate_top_k={config.candidate_top_k}: the reference lists need a sum over {(1 + n_y) * (1 + n_z)} "
            "(proposal list, padding) pairs at a position (the sampling nuclei reach far past the top-k); lower "
            "top_p, raise candidate_top_k, or use the exact full-vocabulary mode (candidate_top_k=None)"
        )
    no = torch.zeros_like(v_o, dtype=torch.bool)
    # the law of O's pad s: class 0 is "z ∈ T_O" (s = k-th value), class j is z = z_j ∉ T_O (s = ℓ_O(z_j))
    q = torch.cat([(po * in_to).sum(-1, keepdim=True), z_prob], -1)  # [N, S]
    s = torch.cat([v_o, torch.where(z_ok, lp_o.gather(-1, z_idx), v_o)], -1)
    s_extra = torch.cat([no, z_ok], -1)  # z ∉ T_O is on O's own list, with log-prob s
    # proposal slots: the k top tokens (one shared list), then the outside proposals (a list each)
    slot_idx = torch.cat([tp_idx, y_idx], -1)  # [N, k + Y]
    slot_prob = torch.cat([pp.gather(-1, tp_idx), y_prob], -1)
    lp_p_slot = torch.cat([tp_val, torch.where(y_ok, lp_p.gather(-1, y_idx), v_p)], -1)
    ok_slot = torch.cat([torch.isfinite(tp_val), y_ok], -1)
    in_to_slot, lp_o_slot = in_to.gather(-1, slot_idx), lp_o.gather(-1, slot_idx)
    # the proposer's lists [N, 1 + Y, k + 1]: class 0 is T_P alone, class i is T_P ∪ {y_i}; and its padding
    extra_p = torch.cat([torch.full_like(v_p, NEG_INF), torch.where(y_ok, lp_p_slot[:, k:], NEG_INF)], -1)
    list_p = torch.cat([tp_val.unsqueeze(1).expand(-1, 1 + n_y, -1), extra_p.unsqueeze(-1)], -1)
    pad_p = torch.cat([v_p, torch.minimum(v_p, lp_p_slot[:, k:])], -1)  # [N, 1 + Y]
    # O's own lists [N, S, k + 1], and where the proposer's list holds their tokens (position criteria only)
    list_o = torch.cat([to_val.unsqueeze(1).expand(-1, 1 + n_z, -1), torch.where(s_extra, s, NEG_INF)[..., None]], -1)
    p_on_o = torch.cat([in_tp.gather(-1, to_idx).unsqueeze(1).expand(-1, 1 + n_z, -1),
                        torch.cat([no, in_tp.gather(-1, z_idx) & z_ok], -1)[..., None]], -1)  # fmt: skip
    lp_p_on_o = torch.cat([lp_p.gather(-1, to_idx).unsqueeze(1).expand(-1, 1 + n_z, -1),
                           torch.cat([v_p, lp_p.gather(-1, z_idx)], -1)[..., None]], -1)  # fmt: skip

    constant = None  # the position-independent criteria, drawn once per position at temperature 0
    if config.select in ("random", "all", "none"):
        value = {"random": tau, "all": 1.0, "none": 0.0}[config.select]
        constant = _greedy_random(torch.full_like(v_p, value), config, generator).unsqueeze(1)  # [N, 1, 1]
    mixture = torch.zeros_like(pp)
    flagged_share = torch.zeros_like(slot_prob)  # Σ_s q(s) f(y, s) per slot
    resampled = torch.zeros(n_rows, device=pp.device)
    changed = torch.zeros_like(resampled)
    step = max(1, _CHUNK_ELEMENTS // (n_rows * (1 + n_y) * (k + 1)))
    for lo in range(0, 1 + n_z, step):
        sl = slice(lo, min(1 + n_z, lo + step))
        s_c, q_c = s[:, sl, None], q[:, sl, None]  # [N, c, 1]
        a_slot = torch.where(in_to_slot[:, None, :], lp_o_slot[:, None, :], s_c)  # [N, c, k + Y]: O aligned
        if config.select in ("delta_logp", "delta_logp_ge"):
            delta = (a_slot - lp_p_slot[:, None, :]) if prop_is_base else (lp_p_slot[:, None, :] - a_slot)
            flag = (delta <= tau).float() if config.select == "delta_logp" else (delta >= tau).float()
        elif constant is not None:
            flag = constant.expand_as(a_slot)
        else:  # each list renormalised, the other model aligned to it: [N, c, 1 + Y, k + 1]
            o_on_p = torch.cat([a_slot[:, :, None, :k].expand(-1, -1, 1 + n_y, -1),
                                torch.cat([s_c, a_slot[..., k:]], -1)[..., None]], -1)  # fmt: skip
            p_on_o_c = torch.where(p_on_o[:, sl, None, :], lp_p_on_o[:, sl, None, :], pad_p[:, None, :, None])
            own_p, own_o = log_probs(list_p).unsqueeze(1), log_probs(list_o[:, sl]).unsqueeze(2)
            p_aligned = log_probs(o_on_p.masked_fill(torch.isneginf(own_p), NEG_INF))
            o_aligned = log_probs(p_on_o_c.masked_fill(torch.isneginf(own_o), NEG_INF))
            p_name, o_name = ("base", "rl") if prop_is_base else ("rl", "base")
            by_list = _list_flags(
                {p_name: own_p, f"{p_name}_aligned": p_aligned, o_name: own_o, f"{o_name}_aligned": o_aligned}, config
            ).expand(-1, s_c.shape[1], 1 + n_y)
            flag = torch.cat([by_list[..., :1].expand(-1, -1, k), by_list[..., 1:]], -1)
        flag = flag * ok_slot[:, None, :]
        # π_X' on each (list, pad): [N, c, 1 + Y, k + 1]
        u_top = (tp_val.masked_fill(~torch.isfinite(tp_val), 0.0)[:, None, :] * w_p + a_slot[..., :k] * w_o)
        u_top = u_top.masked_fill(~torch.isfinite(tp_val)[:, None, :], NEG_INF)
        u_extra = torch.where(y_ok[:, None, :], lp_p_slot[:, None, k:] * w_p + a_slot[..., k:] * w_o, NEG_INF)
        u_extra = torch.cat([torch.full_like(s_c, NEG_INF), u_extra], -1)
        u = torch.cat([u_top.unsqueeze(2).expand(-1, -1, 1 + n_y, -1), u_extra.unsqueeze(-1)], -1)
        px = sampling_log_probs(u, temperature, top_p).exp()
        weight = q_c * slot_prob[:, None, :] * flag  # [N, c, k + Y]: P(y, s, flagged)
        by_list = torch.cat([weight[..., :k].sum(-1, keepdim=True), weight[..., k:]], -1)  # [N, c, 1 + Y]
        mixture.scatter_add_(-1, tp_idx, (by_list.unsqueeze(-1) * px[..., :k]).sum((1, 2)))
        mixture.scatter_add_(-1, y_idx, (by_list[..., 1:] * px[:, :, 1:, k]).sum(1))
        flagged_share += (q_c * flag).sum(1)
        resampled += weight.sum((1, 2))
        stay = torch.cat([px[:, :, 0, :k], px[:, :, 1:, k]], -1)  # π_X' of the proposal itself, on its own list
        changed += (weight * (1.0 - stay)).sum((1, 2))
    mixture.scatter_add_(-1, slot_idx, slot_prob * (1.0 - flagged_share))
    return mixture, resampled, changed


def combine(
    rl_scores: Tensor,
    base_scores: Tensor,
    config: ExtrapolationConfig,
    generator: torch.Generator | None = None,
    *,
    check: bool = True,
) -> tuple[Tensor, SelectionRates | None]:
    """Next-token log-probabilities of extrapolated decoding, and (selective mode) the resample/change rates.

    Args:
        rl_scores: RL-model logits or log-probs, ``[..., V]`` (already cut to the shared vocabulary).
        base_scores: base-model logits or log-probs, same shape.
        config: the settings.
        generator: random source for the greedy ``random`` criterion.
        check: refuse NaN or +inf scores (`check_finite_scores`); ``False`` where the caller has just checked them
            with a message naming the model and the step (one vocabulary-wide pass and host sync less per model).

    Raises ValueError for NaN or +inf scores, for a position where the RL scores mask every token, and (selective
    mode) for one where the base scores mask every token the RL scores allow.

    Tokens that ``rl_scores`` masks with −inf (other logits processors) are masked on the base side as well,
    so no mode can emit them. Full mode returns ``log π_X'`` (π_X after the config's temperature and top-p)
    and ``None``. Selective mode returns the log of the two-stage sampler's exact distribution

        P(y) = π_P'(y) · (1 − f(y)) + m · π_X'(y),   m = Σ_x π_P'(x) f(x),

    where π_P' is the proposer after temperature and top-p and f the flag probability; and the
    `SelectionRates` of that step. With temperature 0 it returns the one-hot distribution of the greedy
    algorithm: the proposer's argmax, or π_X's argmax where flagged.

    ``candidate_top_k=None`` computes this over the full vocabulary, exactly. ``candidate_top_k=k`` is the
    reference code's procedure exactly (`_reference_lists`): f, Δlog p and π_X see each model only through its
    top-k plus its own sampled token, so the emitted distribution is a sum of this mixture over the proposal and
    the other model's sample. ``resampled`` and ``changed`` are the same expectations over that sum.
    """
    if check:
        check_finite_scores(rl_scores, "rl_scores")
        check_finite_scores(base_scores, "base_scores")
    logp_rl = log_probs(rl_scores)
    rl_masked = torch.isneginf(logp_rl)
    if rl_masked.all(-1).any():
        row = tuple(rl_masked.all(-1).nonzero()[0].tolist())
        raise ValueError(
            f"the RL scores mask every token (-inf) at position {row}: nothing can be emitted; check the "
            "logits processors that mask tokens (bad_words_ids, min_new_tokens, ...)"
        )
    # tokens the RL scores mask (other processors: min_new_tokens, bad words, ...) are masked for the base too
    logp_base = log_probs(base_scores.float().masked_fill(rl_masked, NEG_INF))
    if config.select is None:
        logp = extrapolated_log_probs(logp_rl, logp_base, config.model_weights)
        if config.temperature == 1 and config.top_p >= 1:  # already π_X' (sampling it again would only re-round)
            return logp, None
        return sampling_log_probs(logp, config.temperature, config.top_p), None
    base_empty = torch.isneginf(logp_base).all(-1)
    if base_empty.any():
        row = tuple(base_empty.nonzero()[0].tolist())
        raise ValueError(
            f"the base scores are -inf on every token the RL scores allow at position {row}: selective decoding "
            "needs a token both models allow"
        )
    shape = logp_rl.shape
    rl, base = logp_rl.reshape(-1, shape[-1]), logp_base.reshape(-1, shape[-1])
    select = _full_vocabulary if config.candidate_top_k is None else _reference_lists
    mixture, resampled, changed = select(rl, base, config, generator)
    logp = log_probs(mixture.clamp(min=0.0).log().masked_fill(rl_masked.reshape(rl.shape), NEG_INF))
    return logp.reshape(shape), SelectionRates(
        resampled.clamp(0.0, 1.0).reshape(shape[:-1]), changed.clamp(min=0.0).reshape(shape[:-1])
    )


def shared_vocab_size(*sizes: int | None) -> int:
    """The vocabulary both models can emit: the smallest of the logits widths and the tokenizer length."""
    return min(s for s in sizes if s is not None)
