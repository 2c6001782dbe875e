"""The identification experiments of docs/PAPER.md §1 on a problem set: metric distributions and token replacement.

Token replacement runs the core's selective mode through `DeltaLogpExtrapolation`: in the *forward*
direction the base model proposes every token and, where the metric flags it, the token is resampled from
the RL model (weights (0, 1), π_X = π_RL); in the *reverse* direction the RL model proposes and flagged
tokens come from the base model (proposer "rl", weights (1, 0)). The share of replaced tokens is the
expected one: the mean, over the emitted response tokens (up to the first EOS), of the probability that
the step resampled (`replacement_probability`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..evaluation.grading import avg_at_k
from ..processor import DeltaLogpExtrapolation
from .token_stats import (
    METRICS,
    Responses,
    describe,
    eos_token_ids,
    generate_responses,
    ks_distance,
    pooled,
    replacement_probability,
    token_statistics,
)

Grader = Callable[[str, str], bool]  # (completion, reference answer) -> correct?
PromptFn = Callable[[str, Any], str]  # (problem, tokenizer) -> prompt text

DIRECTIONS: dict[str, dict[str, Any]] = {
    "forward": {"proposer": "base", "weights": (0.0, 1.0)},  # base generates, flagged tokens from RL
    "reverse": {"proposer": "rl", "weights": (1.0, 0.0)},  # RL generates, flagged tokens from base
}
PROPOSER_SOURCE = {"forward": "base", "reverse": "rl"}  # whose own responses calibrate the thresholds
SWEEP_METRICS = ("delta_logp", "base_entropy", "rl_entropy", "kl", "js", "random")
SWEEP_CHOICES = (*METRICS, "random")
DEFAULT_SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class Sampling:
    """How every run samples: ``samples`` responses per problem, temperature and top-p as in the paper."""

    samples: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    eos_token_id: tuple[int, ...] = ()


def criterion(metric: str, direction: str) -> str:
    """The core's ``select`` for a metric: forward Δlog p flags tokens RL suppressed (Δ ≤ τ), reverse flags
    tokens RL boosted (Δ ≥ τ); the magnitude metrics flag values ≥ τ either way."""
    return "delta_logp_ge" if metric == "delta_logp" and direction == "reverse" else metric


def threshold_for_share(metric: str, direction: str, values: np.ndarray | None, share: float) -> float:
    """The τ that flags about ``share`` of the proposer's own tokens: a quantile of the metric on the
    proposer's responses (``values``), or ``share`` itself for ``random``."""
    if metric == "random":
        return float(share)
    if values is None or len(values) == 0:
        raise ValueError(f"no {metric} values to calibrate a threshold on")
    low_side = criterion(metric, direction) == "delta_logp"
    return float(np.quantile(values, share if low_side else 1.0 - share))


def accuracy(completions: Sequence[str], answers: Sequence[str], samples: int, grader: Grader) -> dict[str, float]:
    """avg@k: the mean over problems of each problem's share of correct samples, and its standard error."""
    if len(completions) != len(answers) * samples:
        raise ValueError(f"{len(completions)} completions for {len(answers)} problems × {samples} samples")
    groups = [completions[i * samples : (i + 1) * samples] for i in range(len(answers))]
    per_problem = np.array(avg_at_k(groups, answers, grader))
    stderr = float(per_problem.std(ddof=1) / math.sqrt(len(per_problem))) if len(per_problem) > 1 else math.nan
    return {"accuracy": float(per_problem.mean()), "stderr": stderr}


def _generate(model: PreTrainedModel, tokenizer: Any, prompts: Sequence[str], sampling: Sampling, **kwargs: Any):
    settings = asdict(sampling)
    settings.update(kwargs)
    return generate_responses(model, tokenizer, prompts, **settings)


def _completions(batches: Sequence[Responses]) -> list[str]:
    return [c for b in batches for c in b.completions]


def reference_run(
    model: PreTrainedModel,
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    grader: Grader,
    sampling: Sampling,
    desc: str,
) -> tuple[dict[str, np.ndarray], dict[str, float], list[str]]:
    """Sample from ``model`` alone; return the pooled per-token statistics of both models on its responses
    (`token_statistics`), its accuracy, and the completions."""
    batches = _generate(model, tokenizer, prompts, sampling, desc=desc)
    stats = [token_statistics(rl_model, base_model, *b.teacher_forcing(), vocab_size=len(tokenizer)) for b in batches]
    completions = _completions(batches)
    return pooled(batches, stats), accuracy(completions, answers, sampling.samples, grader), completions


def replacement_responses(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    sampling: Sampling,
    *,
    metric: str,
    direction: str,
    threshold: float,
) -> tuple[DeltaLogpExtrapolation, list[Responses], list[Tensor]]:
    """Sample with token replacement; return the processor, the responses and, per batch, the ``[N, T]``
    probability that each response token was resampled (`replacement_probability`)."""
    proc = DeltaLogpExtrapolation(
        base_model, select=criterion(metric, direction), threshold=threshold, temperature=sampling.temperature,
        top_p=sampling.top_p, tokenizer=tokenizer, **DIRECTIONS[direction],
    )  # fmt: skip
    batches = _generate(
        rl_model, tokenizer, prompts, sampling, temperature=0.0 if sampling.temperature == 0 else 1.0, top_p=1.0,
        logits_processor=[proc], desc=f"{direction} {metric} τ={threshold:.3g}",
    )  # fmt: skip
    m = [
        replacement_probability(rl_model, base_model, *b.teacher_forcing(), proc.config, vocab_size=len(tokenizer))
        for b in batches
    ]
    return proc, batches, m


def replacement_run(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    grader: Grader,
    sampling: Sampling,
    *,
    metric: str,
    direction: str,
    threshold: float,
) -> dict[str, Any]:
    """One token-replacement run: accuracy and the expected share of replaced response tokens."""
    proc, batches, m = replacement_responses(
        rl_model, base_model, tokenizer, prompts, sampling, metric=metric, direction=direction, threshold=threshold
    )
    shares = pooled(batches, [{"m": x} for x in m])["m"]
    return {
        "metric": metric,
        "direction": direction,
        "select": proc.config.select,
        "threshold": threshold,
        "replaced_share": float(shares.mean()) if len(shares) else math.nan,
        "response_tokens": len(shares),
        **accuracy(_completions(batches), answers, sampling.samples, grader),
    }


def check_sweep(metrics: Sequence[str], shares: Sequence[float], directions: Sequence[str]) -> None:
    """Refuse an empty or unknown sweep before any model is loaded."""
    if not (metrics and shares and directions):
        raise ValueError("give at least one metric, one share and one direction")
    if unknown := sorted(set(metrics) - set(SWEEP_CHOICES)):
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(SWEEP_CHOICES)}")
    if unknown := sorted(set(directions) - set(DIRECTIONS)):
        raise ValueError(f"unknown direction(s) {unknown}; choose from {', '.join(DIRECTIONS)}")
    if any(not 0.0 < s < 1.0 for s in shares):
        raise ValueError(f"shares must lie strictly between 0 and 1, got {list(shares)}")


def run_analysis(
    rl_model: PreTrainedModel,
    base_model: PreTrainedModel,
    tokenizer: Any,
    problems: Sequence[dict],
    grader: Grader,
    format_prompt: PromptFn,
    sampling: Sampling,
    *,
    metrics: Sequence[str] = SWEEP_METRICS,
    shares: Sequence[float] = DEFAULT_SHARES,
    directions: Sequence[str] = tuple(DIRECTIONS),
) -> dict[str, Any]:
    """Both experiments on ``problems`` (dicts with "problem" and "answer").

    Returns ``{"settings", "reference", "distributions", "replacement", "tokens"}``: ``reference`` holds each
    model's own accuracy; ``distributions`` each metric's summary on base- and RL-generated responses and
    the KS distance between them; ``replacement`` one row per (direction, metric, target share), with τ set
    so the metric flags about that share of the proposer's own tokens; ``tokens`` the raw per-token values.
    """
    check_sweep(metrics, shares, directions)
    if not problems:
        raise ValueError("no problems to analyse")
    if not sampling.eos_token_id:
        sampling = replace(sampling, eos_token_id=tuple(eos_token_ids(rl_model, base_model)))
    prompts = [format_prompt(p["problem"], tokenizer) for p in problems]
    answers = [str(p["answer"]) for p in problems]
    args = (rl_model, base_model, tokenizer, prompts, answers, grader, sampling)

    tokens, reference, examples = {}, {}, {}
    for source, model in (("base", base_model), ("rl", rl_model)):
        tokens[source], reference[source], completions = reference_run(model, *args, desc=f"{source} samples")
        examples[source] = completions[:3]
    distributions = {
        metric: {
            "base_generated": describe(tokens["base"][metric]),
            "rl_generated": describe(tokens["rl"][metric]),
            "ks": ks_distance(tokens["base"][metric], tokens["rl"][metric]),
        }
        for metric in METRICS
    }

    plan = [(d, m, s) for d in directions for m in metrics for s in shares]
    rows = []
    for direction, metric, share in tqdm(plan, desc="token replacement"):
        values = tokens[PROPOSER_SOURCE[direction]].get(metric)
        threshold = threshold_for_share(metric, direction, values, share)
        run = replacement_run(*args, metric=metric, direction=direction, threshold=threshold)
        rows.append({**run, "target_share": share})
    return {
        "settings": {**asdict(sampling), "problems": len(problems), "metrics": list(metrics), "shares": list(shares)},
        "reference": reference,
        "examples": examples,
        "distributions": distributions,
        "replacement": rows,
        "tokens": tokens,
    }
