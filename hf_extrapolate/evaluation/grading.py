r"""The paper's protocol, one home for each part: the prompt, grading (math-verify on the last ``\boxed{}``),
avg@n with its 95% interval, pass@k and maj@n.

The user message is the problem, a newline and `INSTRUCTION`; `build_prompt` wraps it in the chat template when
the tokenizer has one. A completion is correct when the content of its last ``\boxed{...}`` (or ``\fbox{...}``)
is mathematically equivalent to the reference answer according to `math_verify`; one without a closed box is wrong.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def user_message(problem: str) -> str:
    """The user turn of the paper's prompt: ``problem + "\\n" + INSTRUCTION``."""
    return problem + "\n" + INSTRUCTION


def build_prompt(tokenizer: Any, message: str, chat_template: bool = True) -> str:
    """`message` as the single user turn of the tokenizer's chat template, ready for the answer; the raw text
    when the tokenizer has no template or `chat_template` is False."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": message}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return message


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` in `text` (nested braces allowed), else None.

    Only the last box counts: if it is never closed (e.g. a truncated generation) the result is None.
    Escaped braces (``\{``, ``\}``) inside the box do not count as delimiters.
    """
    pos, cmd = max((text.rfind(cmd + "{"), cmd) for cmd in _BOX_COMMANDS)
    if pos < 0:
        return None
    start = pos + len(cmd)  # index of the opening brace
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


@lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> tuple:
    """math-verify parse of one boxed answer (sympy objects plus the raw string as a fallback)."""
    from math_verify import LatexExtractionConfig, parse  # the eval extra; `last_boxed` works without it

    return tuple(parse("\\boxed{" + answer + "}", extraction_config=(LatexExtractionConfig(boxed_match_priority=0),)))


def equivalent(reference: str, candidate: str) -> bool:
    """Whether two answers (box contents, without ``\\boxed``) are equivalent according to math-verify."""
    gold, pred = _parse_answer(reference.strip()), _parse_answer(candidate.strip())
    from math_verify import verify

    return bool(gold and pred) and verify(list(gold), list(pred))


def is_correct(completion: str, answer: str | float) -> bool:
    """Whether the last ``\\boxed{}`` of `completion` is equivalent to the reference `answer`."""
    boxed = last_boxed(completion)
    return boxed is not None and equivalent(str(answer), boxed)


def avg_at_k(
    completions: Sequence[Sequence[str]],
    answers: Sequence[str | float],
    grade: Callable[[str, Any], bool] | None = None,
) -> list[float]:
    """avg@k per problem: the share of problem i's completions (``completions[i]``) that ``grade`` (default
    `is_correct`) accepts against ``answers[i]``."""
    grade = grade or is_correct
    return [sum(grade(c, a) for c in cs) / len(cs) for cs, a in zip(completions, answers, strict=True)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: ``1 − C(n−c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, counting math-verify-equivalent answers as one; ties go to the earliest.

    `answers` are box contents (None for a completion without a box; those do not vote). Returns the first
    occurrence of the winning answer, or None when nothing voted.
    """
    clusters: list[list[str]] = []  # each cluster: equivalent answers, in order of appearance
    for answer in answers:
        if answer is None:
            continue
        for cluster in clusters:
            if answer == cluster[0] or equivalent(cluster[0], answer):
                cluster.append(answer)
                break
        else:
            clusters.append([answer])
    if not clusters:
        return None
    return max(clusters, key=len)[0]  # max keeps the first of equally large clusters


def pass_ks(n: int) -> list[int]:
    """The k reported as pass@k for `n` samples: powers of two from 2 below n, and n itself (none for n=1)."""
    ks = [2**i for i in range(1, n.bit_length()) if 2**i < n]
    return [*ks, n] if n > 1 else []


def metric_names(n: int) -> list[str]:
    """Metric names produced by :func:`score_samples` for `n` samples per problem."""
    if n < 1:
        raise ValueError(f"need at least one sample per problem, got {n}")
    return [f"avg@{n}"] + ([f"maj@{n}"] if n > 1 else []) + [f"pass@{k}" for k in pass_ks(n)]


def score_samples(completions: Sequence[str], answer: str | float) -> dict[str, float]:
    """avg@n, maj@n and pass@k (see :func:`metric_names`) of the `n` completions for one problem."""
    n = len(completions)
    if n < 1:
        raise ValueError("need at least one completion per problem")
    answer = str(answer)
    boxed = [last_boxed(text) for text in completions]
    c = sum(b is not None and equivalent(answer, b) for b in boxed)
    scores = {f"avg@{n}": c / n}
    if n > 1:
        winner = majority_vote(boxed)
        scores[f"maj@{n}"] = float(winner is not None and equivalent(answer, winner))
    scores.update({f"pass@{k}": pass_at_k(n, c, k) for k in pass_ks(n)})
    return scores


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean of `values` (e.g. per-problem avg@k) and the half-width of its Student-t interval,
    ``t_{(1+level)/2, n-1} · s / √n``; NaN half-width for fewer than two values."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    from scipy import stats  # here: scipy.stats takes a while to import, and only intervals need it

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def over_seeds(per_seed: Mapping[int, float], level: float = 0.95) -> dict[str, Any]:
    """One quantity measured once per seed (an accuracy, or a paired difference computed within each seed) as
    ``{"mean", "ci95", "per_seed"}``: its mean over seeds and the half-width of the Student-t interval over them."""
    mean, half = mean_interval(list(per_seed.values()), level)
    return {"mean": mean, "ci95": half, "per_seed": dict(per_seed)}
