"""Identification (docs/PAPER.md §1): per-token Δlog p, entropy and KL of a model pair, and token replacement."""

from .experiment import (
    DIRECTIONS,
    Sampling,
    criterion,
    replacement_responses,
    replacement_run,
    run_analysis,
    threshold_for_share,
)
from .token_stats import (
    METRICS,
    Responses,
    generate_responses,
    replacement_probability,
    teacher_forced,
    token_statistics,
)

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "Responses",
    "Sampling",
    "criterion",
    "generate_responses",
    "replacement_probability",
    "replacement_responses",
    "replacement_run",
    "run_analysis",
    "teacher_forced",
    "threshold_for_share",
    "token_statistics",
]
