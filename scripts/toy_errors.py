"""Diagnostic: what kind of mistake a toy model makes, on its greedy answers to held-out problems.

Each wrong answer is put in the first class it falls in: `lines` (not one line per added term), `terms` (a term
of the problem copied wrong or skipped), `start` (the first number copied wrong), `carry` (a line that does not
start from the previous result), `arithmetic` (a sum written wrong: the `+9` blind spot and random slips), or
`box` (every line right, the boxed answer not the last result).

    python scripts/toy_errors.py --seed 3 MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import make_problems

LINE = re.compile(r"(\d+)([+-]\d)=(\d+)")


def error_kind(terms: list[int], answer: str, completion: str) -> str:
    """"right", or the first kind of mistake in ``completion`` (see the module docstring)."""
    if f"\\boxed{{{answer}}}" in completion:
        return "right"
    lines = [(int(a), int(t), int(r)) for a, t, r in LINE.findall(completion)]
    if len(lines) != len(terms) - 1:
        return "lines"
    if [t for _, t, _ in lines] != terms[1:]:
        return "terms"
    if lines[0][0] != terms[0]:
        return "start"
    if any(lines[i][0] != lines[i - 1][2] for i in range(1, len(lines))):
        return "carry"
    if any(a + t != r for a, t, r in lines):
        return "arithmetic"
    return "box"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="toy model folders")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out problems")
    parser.add_argument("--n-problems", type=int, default=300)
    args = parser.parse_args()
    problems = make_problems("test", args.n_problems, seed=args.seed)
    for folder in args.models:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
        completions = generate(model, tokenizer, problems, do_sample=False, batch_size=100)
        kinds = Counter(error_kind(p["terms"], p["answer"], c[0]) for p, c in zip(problems, completions))
        shares = ", ".join(f"{kind} {100 * n / len(problems):.1f}%" for kind, n in kinds.most_common())
        print(f"{folder}: {shares}")


if __name__ == "__main__":
    main()
