"""``candidate_top_k=k`` against an independent re-implementation of the reference code's decoding step.

The reference (`Hesse73/RLVR-Directions`, `extrapolate/extrapolate.py`) steps two vLLM engines with the same
`SamplingParams(temperature, top_p, logprobs=k)`. Each engine samples its own token and returns its raw (pre-
temperature) log-probs of its top k plus its sampled token. `get_enable_mask` flags the main engine's sample
from those lists (a token missing from a list takes the smallest log-prob in that list), and `weighted_sampling`
resamples a flagged one from `w_main · main + w_assistant · assistant_aligned` over the main engine's list, after
temperature and top-p. What follows is written from reading that code (numpy and plain Python, no project code);
the main engine is the proposer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_extrapolate import ExtrapolationConfig
from hf_extrapolate.extrapolation import combine

# project criterion -> reference criterion, for main = base and for main = RL (Δ = log π_RL − log π_base)
CRITERIA = {
    "delta_logp": ("neg_logp", "logp"),  # the reference's logp_diff is main − assistant
    "delta_logp_ge": ("logp", "neg_logp"),  # with threshold −τ
    "base_entropy": ("entropy", "assist_entropy"),
    "rl_entropy": ("assist_entropy", "entropy"),
    "kl": ("kl", "kl_r"),  # the reference's 'kl' is KL(assistant‖main)
    "reverse_kl": ("kl_r", "kl"),
    "js": ("js", "js"),
    "random": ("rand", "rand"),
    "all": ("all", "all"),
    "none": ("none", "none"),
}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def keep_top_p(logits: np.ndarray, top_p: float) -> np.ndarray:
    """vLLM's (and the reference's) top-p: sort ascending, drop while the cumulative mass is <= 1 − top_p, keep
    the largest; returns the probabilities over the kept entries (0 elsewhere)."""
    order = np.argsort(logits)
    probs = np.exp(log_softmax(logits[order]))
    keep = ~(np.cumsum(probs) <= 1 - top_p)
    keep[-1] = True
    out = np.zeros(len(logits))
    out[order[keep]] = np.exp(log_softmax(logits[order[keep]]))
    return out


def engine_probs(logp: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """What an engine samples from: temperature, then top-p."""
    return keep_top_p(logp / temperature, top_p)


def top_k_list(logp: np.ndarray, k: int) -> dict[int, float]:
    return {int(t): float(logp[t]) for t in np.argsort(-logp)[:k]}


def engine_list(top: dict[int, float], logp: np.ndarray, sampled: int) -> dict[int, float]:
    """An engine's returned log-probs: its top k (``top``), plus the token it sampled."""
    return {**top, int(sampled): float(logp[sampled])}


def normalised(values: list[float]) -> list[float]:
    top = max(values)
    lse = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - lse for v in values]


def kl_lists(a: dict[int, float], b: dict[int, float]) -> float:
    """KL over a's list, b aligned to it (missing: the smallest of b's list), both renormalised."""
    pad = min(b.values())
    la, lb = normalised(list(a.values())), normalised([b.get(t, pad) for t in a])
    return sum(math.exp(x) * (x - y) for x, y in zip(la, lb))


def reference_step(main, assistant, proposal, criterion, tau, weights, temperature, top_p):
    """One step of the reference: (flag probability, {token: resampling probability})."""
    if criterion in ("logp", "neg_logp"):
        pad = min(assistant.values())
        diff = main[proposal] - assistant.get(proposal, pad)
        flag = float(diff <= tau if criterion == "logp" else -diff <= tau)
    elif criterion in ("entropy", "assist_entropy"):
        lp = normalised(list((main if criterion == "entropy" else assistant).values()))
        flag = float(-sum(math.exp(v) * v for v in lp) >= tau)
    elif criterion in ("kl", "kl_r", "js"):
        kl_main, kl_assistant = kl_lists(main, assistant), kl_lists(assistant, main)
        flag = float({"kl": kl_assistant, "kl_r": kl_main, "js": 0.5 * (kl_main + kl_assistant)}[criterion] >= tau)
    else:
        flag = {"rand": tau, "all": 1.0, "none": 0.0}[criterion]
    tokens = list(main)
    pad = min(assistant.values())
    logits = np.array([main[t] * weights[0] + assistant.get(t, pad) * weights[1] for t in tokens]) / temperature
    probs = keep_top_p(logits, top_p)
    return flag, {t: p for t, p in zip(tokens, probs) if p > 0}


def settings(lp_base, lp_rl, select, threshold, weights, proposer):
    """The reference's arguments for a project setting."""
    main_is_base = proposer == "base"
    criterion = CRITERIA[select][0 if main_is_base else 1]
    tau = -threshold if select == "delta_logp_ge" else threshold
    w_base, w_rl = weights
    main, assistant = (lp_base, lp_rl) if main_is_base else (lp_rl, lp_base)
    return main, assistant, criterion, tau, ((w_base, w_rl) if main_is_base else (w_rl, w_base))


def reference_exact(lp_base, lp_rl, k, select, threshold, weights, proposer, temperature, top_p):
    """The reference's emitted distribution and rates by enumerating both engines' samples."""
    main, assistant, criterion, tau, w = settings(lp_base, lp_rl, select, threshold, weights, proposer)
    p_main, p_assistant = engine_probs(main, temperature, top_p), engine_probs(assistant, temperature, top_p)
    top_main, top_assistant = top_k_list(main, k), top_k_list(assistant, k)
    out, resampled, changed = np.zeros(len(main)), 0.0, 0.0
    for y in np.nonzero(p_main)[0]:
        for z in np.nonzero(p_assistant)[0]:
            weight = p_main[y] * p_assistant[z]
            lists = engine_list(top_main, main, y), engine_list(top_assistant, assistant, z)
            flag, probs = reference_step(*lists, int(y), criterion, tau, w, temperature, top_p)
            out[y] += weight * (1 - flag)
            for t, p in probs.items():
                out[t] += weight * flag * p
            resampled += weight * flag
            changed += weight * flag * (1 - probs.get(int(y), 0.0))
    return out, resampled, changed


def reference_monte_carlo(lp_base, lp_rl, k, select, threshold, weights, proposer, temperature, top_p, n, seed):
    """Run the reference's step n times (both engines sample, flag, resample); returns the emitted tokens' counts."""
    rng = np.random.default_rng(seed)
    main, assistant, criterion, tau, w = settings(lp_base, lp_rl, select, threshold, weights, proposer)
    p_main, p_assistant = engine_probs(main, temperature, top_p), engine_probs(assistant, temperature, top_p)
    proposals = rng.choice(len(main), size=n, p=p_main / p_main.sum())
    samples = rng.choice(len(main), size=n, p=p_assistant / p_assistant.sum())
    top_main, top_assistant = top_k_list(main, k), top_k_list(assistant, k)
    vocab = len(main)
    pair_counts = np.bincount(proposals * vocab + samples, minlength=vocab * vocab)
    emitted = np.zeros(vocab, dtype=np.int64)
    for pair in np.nonzero(pair_counts)[0]:
        (y, z), c = divmod(int(pair), vocab), pair_counts[pair]
        lists = engine_list(top_main, main, y), engine_list(top_assistant, assistant, z)
        flag, probs = reference_step(*lists, int(y), criterion, tau, w, temperature, top_p)
        flagged = rng.binomial(c, flag)
        emitted[y] += c - flagged
        tokens = np.array(list(probs))
        emitted[tokens] += rng.multinomial(flagged, np.array(list(probs.values())) / sum(probs.values()))
    return emitted


def project(lp_base, lp_rl, k, select, threshold, weights, proposer, temperature, top_p):
    cfg = ExtrapolationConfig(weights=weights, select=select, threshold=threshold, temperature=temperature,
                              top_p=top_p, proposer=proposer, candidate_top_k=k)  # fmt: skip
    logp, rates = combine(torch.tensor(lp_rl)[None].float(), torch.tensor(lp_base)[None].float(), cfg)
    return logp.exp()[0].double().numpy(), rates.resampled.item(), rates.changed.item()


def nucleus(lp: np.ndarray, temperature: float, top_p: float) -> int:
    return int((engine_probs(lp, temperature, top_p) > 0).sum())


def top_k_only(lp_base, lp_rl, k, threshold, weights, temperature, top_p):
    """The earlier top-k approximation (delta_logp, base proposer): the proposal from the whole nucleus, π_X on the
    base's top k only, the RL side padded with its k-th log-prob."""
    p_base = engine_probs(lp_base, temperature, top_p)
    top_b, top_r = np.argsort(-lp_base)[:k], set(np.argsort(-lp_rl)[:k].tolist())
    aligned = np.array([lp_rl[t] if t in top_r else np.sort(lp_rl)[-k] for t in range(len(lp_rl))])
    flag = (aligned - lp_base) <= threshold
    px = np.zeros(len(lp_base))
    px[top_b] = keep_top_p((weights[0] * lp_base[top_b] + weights[1] * aligned[top_b]) / temperature, top_p)
    return p_base * ~flag + (p_base * flag).sum() * px


def wide_pair(seed: int, vocab: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs decaying over the vocabulary (``scale`` tokens per nat), RL a noisy copy of the base."""
    rng = np.random.default_rng(seed)
    base = -np.arange(vocab) / scale + rng.normal(0, 0.3, vocab)
    base = base[rng.permutation(vocab)]
    return log_softmax(base), log_softmax(base + rng.normal(0, 0.8, vocab))


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def test_wide_nuclei_match_the_reference_by_monte_carlo():
    """Vocabulary 400, both top-p 0.95 nuclei far wider than the top 50: proposals outside the top 50 join the
    proposer's list and the RL engine's own sample moves its padding value."""
    lp_base, lp_rl = wide_pair(0, 400, 40.0)
    k, tau, weights, temperature, top_p = 50, -0.3, (-0.5, 1.5), 1.0, 0.95
    assert min(nucleus(lp_base, temperature, top_p), nucleus(lp_rl, temperature, top_p)) > 2 * k
    exact, m, changed = project(lp_base, lp_rl, k, "delta_logp", tau, weights, "base", temperature, top_p)
    n = 2_000_000
    counts = reference_monte_carlo(lp_base, lp_rl, k, "delta_logp", tau, weights, "base", temperature, top_p, n, 1)
    old = top_k_only(lp_base, lp_rl, k, tau, weights, temperature, top_p)
    distance, to_old = tv(counts / n, exact), tv(counts / n, old)
    print(f"TV(reference Monte Carlo n={n}, closed form) = {distance:.4f}; to the top-k-only formula: {to_old:.4f}")
    assert distance < 0.01
    assert to_old > 2 * distance  # the sampled tokens joining the lists are visible at this n
    assert 0.1 < m < 0.9 and 0 < changed <= m


@pytest.mark.parametrize("proposer", ["base", "rl"])
@pytest.mark.parametrize("select", list(CRITERIA))
def test_every_criterion_matches_the_reference_exactly(select, proposer):
    """Small vocabulary, nuclei wider than k: the closed form against enumerating both engines' samples."""
    lp_base, lp_rl = wide_pair(3, 40, 6.0)
    k, weights, temperature, top_p = 6, (-0.4, 1.4), 0.9, 0.9
    assert min(nucleus(lp_base, temperature, top_p), nucleus(lp_rl, temperature, top_p)) > k
    threshold = {"delta_logp": -0.3, "delta_logp_ge": 0.3, "random": 0.4, "all": None, "none": None}.get(select)
    if threshold is None and select not in ("all", "none"):  # between two statistics near the median: no ties
        main, assistant, criterion, _, _ = settings(lp_base, lp_rl, select, 0.0, weights, proposer)
        top_main, top_assistant = top_k_list(main, k), top_k_list(assistant, k)
        stats = set()
        for y in np.nonzero(engine_probs(main, temperature, top_p))[0]:
            for z in np.nonzero(engine_probs(assistant, temperature, top_p))[0]:
                a, b = engine_list(top_main, main, y), engine_list(top_assistant, assistant, z)
                stats.add({"entropy": -sum(math.exp(v) * v for v in normalised(list(a.values()))),
                           "assist_entropy": -sum(math.exp(v) * v for v in normalised(list(b.values()))),
                           "kl": kl_lists(b, a), "kl_r": kl_lists(a, b),
                           "js": 0.5 * (kl_lists(a, b) + kl_lists(b, a))}[criterion])  # fmt: skip
        stats = sorted(stats)
        threshold = 0.5 * (stats[len(stats) // 2 - 1] + stats[len(stats) // 2])
    expected, m_ref, changed_ref = reference_exact(
        lp_base, lp_rl, k, select, threshold, weights, proposer, temperature, top_p
    )
    got, m, changed = project(lp_base, lp_rl, k, select, threshold, weights, proposer, temperature, top_p)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert select in ("all", "none") or 0.01 < m_ref < 0.99  # the criterion flags some draws, not all
    assert m == pytest.approx(m_ref, abs=2e-6) and changed == pytest.approx(changed_ref, abs=2e-6)


def test_nuclei_inside_the_top_k_give_the_top_k_formula():
    """Where both nuclei fit in the top 50 (the reference's top-p 0.7 on peaked models), the sampled tokens add
    nothing: the reference is the top-k-only formula, and so is the closed form."""
    lp_base, lp_rl = wide_pair(5, 400, 4.0)
    k, weights, temperature, top_p = 50, (-0.5, 1.5), 1.0, 0.7
    assert max(nucleus(lp_base, temperature, top_p), nucleus(lp_rl, temperature, top_p)) <= k
    delta = np.sort((lp_rl - lp_base)[engine_probs(lp_base, temperature, top_p) > 0])
    tau = float(delta[len(delta) // 2 - 1 : len(delta) // 2 + 1].mean())  # mid-nucleus, between two Δ values
    got, m, _ = project(lp_base, lp_rl, k, "delta_logp", tau, weights, "base", temperature, top_p)
    expected, m_ref, _ = reference_exact(lp_base, lp_rl, k, "delta_logp", tau, weights, "base", temperature, top_p)
    np.testing.assert_allclose(expected, top_k_only(lp_base, lp_rl, k, tau, weights, temperature, top_p), atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert 0.05 < m < 0.95 and m == pytest.approx(m_ref, abs=2e-6)


def test_greedy_reference_mode_takes_the_top_k_argmax():
    """Temperature 0 (which the reference's division by the temperature cannot run): the proposal is the
    proposer's argmax, and a flagged one is replaced by π_X's argmax over its top k with the other side padded."""
    lp_base, lp_rl = wide_pair(7, 60, 5.0)
    k, weights = 5, (-2.0, 3.0)
    for tau in (-1e3, 1e3):  # flagged, not flagged
        got, m, _ = project(lp_base, lp_rl, k, "delta_logp_ge", tau, weights, "base", 0.0, 1.0)
        top_b, top_r = np.argsort(-lp_base)[:k], np.argsort(-lp_rl)[:k]
        pad = lp_rl[top_r].min()
        aligned = np.array([lp_rl[t] if t in top_r else pad for t in top_b])
        y = top_b[0]
        flagged = aligned[0] - lp_base[y] >= tau
        expected = top_b[np.argmax(weights[0] * lp_base[top_b] + weights[1] * aligned)] if flagged else y
        assert got[expected] == 1.0 and m == float(flagged)


def test_batched_rows_equal_rows_alone():
    """Rows with different numbers of outside proposals and pads are padded to the widest: each row is unchanged."""
    pairs = [wide_pair(seed, 60, scale) for seed, scale in ((11, 3.0), (12, 8.0), (13, 1.0))]
    base = torch.tensor(np.stack([b for b, _ in pairs])).float()
    rl = torch.tensor(np.stack([r for _, r in pairs])).float()
    cfg = ExtrapolationConfig(gamma=0.6, select="js", threshold=0.05, top_p=0.9, candidate_top_k=8)
    logp, (m, changed) = combine(rl, base, cfg)
    for i in range(3):
        row, (m_row, changed_row) = combine(rl[i : i + 1], base[i : i + 1], cfg)
        torch.testing.assert_close(logp[i : i + 1], row, rtol=0, atol=1e-6)
        torch.testing.assert_close(m[i : i + 1], m_row)
        torch.testing.assert_close(changed[i : i + 1], changed_row)
    widths = [nucleus(b.numpy().astype(float), 1.0, 0.9) for b in base]
    assert min(widths) <= 8 < max(widths)  # one row fits in the top-k, another does not
