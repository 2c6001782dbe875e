"""Grading: last \\boxed{}, math-verify equivalence, pass@k, majority vote, per-problem scores."""

from __future__ import annotations

import math
import random

import pytest

from hf_extrapolate.evaluation.grading import (
    is_correct,
    last_boxed,
    majority_vote,
    mean_interval,
    metric_names,
    pass_at_k,
    score_samples,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{a_{b_{c}}} and more", "a_{b_{c}}"),  # nested braces
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box counts
        ("\\boxed{1} then \\fbox{9}", "9"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not delimiters
        ("no box at all", None),
        ("\\boxed{1} then a truncated \\boxed{2", None),  # the last box is unclosed
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "verdict"),
    [
        ("Thus $\\boxed{\\frac{1}{2}}$.", "0.5", True),
        ("Thus $\\boxed{0.5}$.", "\\frac{1}{2}", True),
        ("$\\boxed{\\dfrac{14}{3}}$", "\\frac{14}{3}", True),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),  # nested braces, equal values
        ("try \\boxed{3}, no wait: \\boxed{4}", "4", True),  # several boxes, last one counts
        ("try \\boxed{4}, no wait: \\boxed{3}", "4", False),
        ("the answer is 4", "4", False),  # no box
        ("\\boxed{5 \\text{ cm}}", "5", True),  # units
        ("\\boxed{90^\\circ}", "90", True),
        ("\\boxed{ 42 }", "42", True),  # spaces
        ("\\boxed{x = 3}", "3", True),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{18.0}", "18", True),
        ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{\\text{(C)}}", "C", True),
        ("\\boxed{2}", "3", False),
        ("\\boxed{17}", 17.0, True),  # numeric reference answers are accepted
    ],
)
def test_is_correct(completion: str, answer: str, verdict: bool) -> None:
    assert is_correct(completion, answer) is verdict


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 is the fraction correct
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (32, 1, 16, 0.5),  # C(31,16)/C(32,16) = 16/32
        (10, 0, 5, 0.0),
        (10, 10, 3, 1.0),
        (10, 8, 3, 1.0),  # fewer than k wrong samples: some k-subset is always right
        (6, 3, 6, 1.0),
    ],
)
def test_pass_at_k(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_majority_vote_counts_equivalent_answers_together() -> None:
    assert majority_vote(["3", "0.5", "\\frac{1}{2}", "3", "1/2", None]) == "0.5"
    assert majority_vote(["2", "3"]) == "2"  # a tie goes to the earliest
    assert majority_vote([None, None]) is None


def test_metric_names() -> None:
    assert metric_names(1) == ["avg@1"]
    assert metric_names(4) == ["avg@4", "maj@4", "pass@2", "pass@4"]
    assert metric_names(6) == ["avg@6", "maj@6", "pass@2", "pass@4", "pass@6"]
    assert metric_names(32) == ["avg@32", "maj@32", "pass@2", "pass@4", "pass@8", "pass@16", "pass@32"]


def test_score_samples() -> None:
    completions = ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{1.0}", "\\boxed{2}", "nothing"]
    scores = score_samples(completions, "1")
    assert list(scores) == metric_names(6)
    assert scores["avg@6"] == pytest.approx(2 / 6)
    assert scores["maj@6"] == 0.0  # "2" wins the vote
    assert scores["pass@2"] == pytest.approx(1 - 6 / 15)  # 1 - C(4,2)/C(6,2)
    assert scores["pass@6"] == 1.0
    assert score_samples(["\\boxed{1}"], "1") == {"avg@1": 1.0}


def test_mean_interval_against_closed_forms() -> None:
    """Two values: t₀.₉₇₅,₁ = tan(0.475π) (Cauchy); three: t₀.₉₇₅,₂ = 0.95/√(2·0.975·0.025); s/√n by hand."""
    mean, half = mean_interval([0.0, 1.0])
    assert mean == 0.5 and half == pytest.approx(math.tan(math.pi * 0.475) * math.sqrt(0.5) / math.sqrt(2))
    mean, half = mean_interval([1.0, 2.0, 6.0])
    assert mean == 3.0 and half == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025) * math.sqrt(7) / math.sqrt(3))
    assert math.isnan(mean_interval([0.4])[1])
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_mean_interval_covers_the_mean_95_percent_of_the_time() -> None:
    """Monte Carlo: intervals from 5 normal draws cover the true mean in 95% of 4000 trials (±1.1% at 3σ)."""
    rng = random.Random(0)
    trials = [mean_interval([rng.gauss(1.0, 2.0) for _ in range(5)]) for _ in range(4000)]
    coverage = sum(abs(mean - 1.0) <= half for mean, half in trials) / len(trials)
    assert abs(coverage - 0.95) < 0.011
    mean, half = mean_interval([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and half == pytest.approx(3.182446 * (1 / 3) ** 0.5 / 2, rel=1e-6)
    assert mean_interval([0.3])[0] == 0.3 and math.isnan(mean_interval([0.3])[1])
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
