"""Property-based checks of the math module's guarantees, over random masks, magnitudes, dtypes and settings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_extrapolate import ExtrapolationConfig
from hf_extrapolate.configuration import CRITERIA, MAX_GAMMA
from hf_extrapolate.extrapolation import check_finite_scores, combine, log_probs

NEG_INF = float("-inf")
EXTREMES = [NEG_INF, NEG_INF, 1e30, -1e30, 3e38, -3e38, 1e-30, 60000.0, -60000.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FAST = settings(max_examples=60, deadline=None)


@st.composite
def scores(draw, rows: int, vocab: int) -> torch.Tensor:
    value = st.one_of(st.floats(-30, 30), st.sampled_from(EXTREMES))
    return torch.tensor(draw(st.lists(st.lists(value, min_size=vocab, max_size=vocab), min_size=rows, max_size=rows)))


@st.composite
def cases(draw):
    rows, vocab = draw(st.integers(1, 3)), draw(st.integers(2, 9))
    dtype = draw(st.sampled_from(DTYPES))
    rl, base = draw(scores(rows, vocab)).to(dtype), draw(scores(rows, vocab)).to(dtype)
    select = draw(st.sampled_from([None, *CRITERIA]))
    threshold = {None: None, "all": None, "none": None, "random": draw(st.sampled_from([0.0, 0.3, 1.0]))}.get(
        select, draw(st.sampled_from([-0.3, 0.0, 0.5, 2.0, -1e6]))
    )
    config = ExtrapolationConfig(
        gamma=draw(st.sampled_from([0.0, 0.5, 3.0, -0.5, 1e6, MAX_GAMMA])),
        select=select,
        threshold=threshold,
        temperature=draw(st.sampled_from([0.0, 1e-40, 0.5, 1.0, 3.0])),
        top_p=draw(st.sampled_from([1.0, 0.9, 0.5, 1e-3])),
        proposer=draw(st.sampled_from(["base", "rl"])),
        candidate_top_k=draw(st.sampled_from([None, None, 1, 3])),
    )
    return rl, base, config


def refusal(rl: torch.Tensor, base: torch.Tensor, config: ExtrapolationConfig) -> str | None:
    """What `combine` must refuse, from the inputs alone."""
    if any((t.float().isnan() | t.float().isposinf()).any() for t in (rl, base)):
        return "NaN"  # "+inf" or "NaN" in the message
    allowed = ~rl.float().isneginf()
    if (~allowed).all(-1).any():
        return "mask every token"
    if config.select is not None and (base.float().isneginf() | ~allowed).all(-1).any():
        return "needs a token both models allow"
    return None


@given(cases())
@FAST
def test_outputs_are_normalised_log_probs_or_a_refusal(case):
    rl, base, config = case
    expected = refusal(rl, base, config)
    if expected is not None:
        with pytest.raises(ValueError) as err:
            combine(rl, base, config, torch.Generator().manual_seed(0))
        assert expected in str(err.value) or (expected == "NaN" and "+inf" in str(err.value))
        return
    logp, rates = combine(rl, base, config, torch.Generator().manual_seed(0))
    assert logp.dtype == torch.float32 and logp.shape == rl.shape
    assert not logp.isnan().any() and not logp.isposinf().any()
    assert torch.logsumexp(logp, -1).abs().max() < 1e-4
    assert logp[rl.float().isneginf()].isneginf().all()  # a token the RL side masks never gets probability
    if config.temperature == 0 and config.select != "random":
        assert ((logp == 0).sum(-1) == 1).all()  # greedy: one-hot
    if config.select is None:
        assert rates is None
    else:
        m, changed = rates
        assert (changed >= 0).all() and (changed <= m + 1e-6).all() and (m <= 1).all()


@given(scores(2, 7), st.sampled_from(DTYPES))
@settings(max_examples=25, deadline=None)
def test_gamma_zero_full_mode_is_the_rl_log_softmax(rl, dtype):
    rl = rl.to(dtype)
    rl[:, 0] = 1.0  # every row allows a token
    if (rl.float().isnan() | rl.float().isposinf()).any():
        return
    base = torch.randn(rl.shape)
    logp, _ = combine(rl, base, ExtrapolationConfig(gamma=0.0))
    reference = torch.log_softmax(rl.double().clamp(min=-1e300), -1)  # float64: no overflow in x − max
    reference = reference.masked_fill(rl.isneginf(), NEG_INF)
    torch.testing.assert_close(logp.exp().double(), reference.exp(), rtol=0, atol=1e-6)
    shown = reference > -80  # log-probs agree wherever the probability is a normal float32
    torch.testing.assert_close(logp.double()[shown], reference[shown], rtol=1e-5, atol=1e-5)


@given(scores(2, 6), st.sampled_from(DTYPES))
@settings(max_examples=25, deadline=None)
def test_log_probs_of_finite_or_masked_scores(x, dtype):
    x = x.to(dtype)
    if (x.float().isnan() | x.float().isposinf()).any():
        return
    logp = log_probs(x)
    assert not logp.isnan().any() and not logp.isposinf().any()
    masked = x.float().isneginf()
    assert torch.equal(logp.isneginf(), masked)  # finite in, finite out: −inf only where masked
    full = ~masked.all(-1)
    assert (torch.logsumexp(logp[full], -1).abs() < 1e-5).all()


def test_non_finite_scores_are_refused_with_the_model_and_step():
    scores_ = torch.zeros(2, 5)
    scores_[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"base model at step 7 hold NaN \(1 scores, the first at index \(1, 3\)\)"):
        check_finite_scores(scores_, "the base model", " at step 7")
    scores_[1, 3] = math.inf
    with pytest.raises(ValueError, match=r"rl_scores hold \+inf \(1 scores"):
        combine(scores_, torch.zeros(2, 5), ExtrapolationConfig(gamma=1.0))
    check_finite_scores(torch.tensor([0.0, NEG_INF]), "the base model")  # −inf is a mask: accepted


def test_reported_cases():
    """The cases of issue 13: disjoint masks, a fully masked row, overflowing γ and temperature."""
    rl, base = torch.tensor([[0.0, NEG_INF]]), torch.tensor([[NEG_INF, 0.0]])
    logp, _ = combine(rl, base, ExtrapolationConfig(gamma=0.0, temperature=0.1))
    assert torch.equal(logp, torch.tensor([[0.0, NEG_INF]]))  # γ = 0 is the RL side, whatever the base masks
    with pytest.raises(ValueError, match="mask every token"):
        combine(torch.full((1, 3), NEG_INF), torch.zeros(1, 3), ExtrapolationConfig(temperature=0))
    with pytest.raises(ValueError, match="gamma must be in"):
        ExtrapolationConfig(gamma=1e37)
    with pytest.raises(ValueError, match="weights\\[1\\] must be in"):
        ExtrapolationConfig(weights=(0.0, 1e32))
    rl, base = torch.tensor([[0.0, 0.5, 0.2]]), torch.tensor([[0.0, 0.2, 2.0]])
    for temperature in (1e-40, 1e-45):  # tempering cannot overflow: the argmax, not token 0
        logp, _ = combine(rl, base, ExtrapolationConfig(gamma=1.0, temperature=temperature))
        assert logp.argmax().item() == (2 * rl.log_softmax(-1) - base.log_softmax(-1)).argmax().item() == 1
        assert logp[0, 1] == 0
    logp, _ = combine(rl, base, ExtrapolationConfig(gamma=MAX_GAMMA))  # the largest γ: still finite, Δ's argmax
    assert logp.argmax().item() == (rl.log_softmax(-1) - base.log_softmax(-1)).argmax().item()


@given(cases())
@FAST
def test_reference_lists_covering_the_vocabulary_are_the_full_vocabulary_mode(case):
    """With k ≥ V every list is a model's whole allowed vocabulary and its padding is the exact mode's floor rule
    (unless the base side masks a token the RL side allows: no list holds it, and a list pads the exact KL's +inf)."""
    rl, base, config = case
    if config.select is None or refusal(rl, base, config) is not None:
        return
    if (base.float().isneginf() & ~rl.float().isneginf()).any():
        return
    settings_ = {**config.to_dict(), "weights": config.model_weights, "candidate_top_k": None}
    exact, (m, changed) = combine(rl, base, ExtrapolationConfig(**settings_), torch.Generator().manual_seed(0))
    settings_["candidate_top_k"] = rl.shape[-1]
    lists, (m_ref, changed_ref) = combine(rl, base, ExtrapolationConfig(**settings_), torch.Generator().manual_seed(0))
    torch.testing.assert_close(lists.exp(), exact.exp(), rtol=0, atol=1e-5)
    torch.testing.assert_close(m_ref, m, rtol=0, atol=1e-5)
    torch.testing.assert_close(changed_ref, changed, rtol=0, atol=1e-5)
