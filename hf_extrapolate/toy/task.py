"""A verifiable toy reasoning task: running sums of small numbers, worked step by step, ending in `\\boxed{}`.

A problem is `Compute 38+7+5+9+6.`; its solution writes one line per addition (`38+7=45`, `45+5=50`, ...)
and ends with `\\boxed{65}`. Problems are drawn deterministically from a seed; a problem belongs to the
train or the test split by a hash of its text, so the splits are disjoint whatever the seeds.
`noisy_solution` writes the imperfect demonstrations the base model is trained on: random slips (a result
off by 1 or 10) and a systematic one (adding 9 written as adding 8); a wrong step carries on to the answer.
"""

from __future__ import annotations

import hashlib
import random

from hf_extrapolate.evaluation.grading import build_prompt, user_message

SPLITS = ("train", "test")
TEST_SHARE = 5  # one problem in TEST_SHARE (by hash) is held out
MIN_OPS, MAX_OPS = 3, 6
LOW, HIGH = 10, 99  # the start and every running value lie within [LOW, HIGH]
SLIPS = (-10, -1, 1, 10)


def _split_of(problem: str) -> str:
    digest = hashlib.sha256(problem.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def _draw_terms(rng: random.Random) -> list[int]:
    """A start value and distinct single digits to add, the sum staying within [LOW, HIGH]."""
    steps = rng.sample(range(1, 10), rng.randint(MIN_OPS, MAX_OPS))
    return [rng.randint(LOW, HIGH - sum(steps)), *steps]


def _problem_text(terms: list[int]) -> str:
    return "Compute " + str(terms[0]) + "".join(f"{t:+d}" for t in terms[1:]) + "."


def noisy_solution(
    terms: list[int], slip_rate: float = 0.0, nine_rate: float = 0.0, rng: random.Random | None = None
) -> tuple[str, int]:
    """Worked steps ending in `\\boxed{}`, with the mistakes of imperfect demonstrations.

    Each step slips (result off by 1 or 10) with probability `slip_rate`; a step adding 9 is also written as
    adding 8 with probability `nine_rate` (a systematic blind spot: above 0.5 it is the most likely result).
    Returns (solution, the boxed value); later steps continue from a wrong value, as a person would.
    """
    if (slip_rate or nine_rate) and rng is None:
        raise ValueError("noisy_solution needs an rng when slip_rate or nine_rate > 0")
    value, lines = terms[0], []
    for t in terms[1:]:
        result = value + t
        if t == 9 and nine_rate and rng.random() < nine_rate:
            result -= 1
        elif slip_rate and rng.random() < slip_rate:
            result += rng.choice(SLIPS)
        lines.append(f"{value}{t:+d}={result}")
        value = result
    return "\n".join([*lines, f"\\boxed{{{value}}}"]), value


def make_problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct problems of `split` ("train" or "test"), the same for the same seed.

    Each dict has "problem", "answer" (str), "solution" (correct worked steps) and "terms".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"toy-task/{split}/{seed}")
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n:
        terms = _draw_terms(rng)
        problem = _problem_text(terms)
        if problem in seen or _split_of(problem) != split:
            continue
        seen.add(problem)
        solution, value = noisy_solution(terms)
        out.append({"problem": problem, "answer": str(value), "solution": solution, "terms": terms})
    return out


def format_prompt(problem: str, tokenizer) -> str:
    """The paper's prompt (`grading.user_message` in `grading.build_prompt`), ready for the answer."""
    return build_prompt(tokenizer, user_message(problem))
