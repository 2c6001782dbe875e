"""Write the K-sample variants of the hfx tasks, as lm-eval generates its own task grids.

    python scripts/generate_task_variants.py           # (re)write eval_tasks/_hfx_avgK.yaml, hfx_*_avgK.yaml
    python scripts/generate_task_variants.py --check   # exit 1, naming them, if any file differs from what it writes

`_hfx_avgK.yaml` holds K's repeats, filter and metrics (the names come from `metric_names(K)`, so they are the ones
the grader produces); `TASK_avgK.yaml` includes the task and it. `hfx_toy_arith_avg8.yaml` (its own sampling
settings) and the `hfx_paper_avg32` group are written by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_extrapolate.evaluation.grading import metric_names

TASKS = Path(__file__).resolve().parents[1] / "eval_tasks"
# task -> the sample counts it has variants for
GRID: dict[str, tuple[int, ...]] = {
    "hfx_aime24": (16, 32), "hfx_aime25": (16, 32), "hfx_amc23": (16, 32), "hfx_gsm8k": (4, 16),
    "hfx_math500": (4, 16),
}  # fmt: skip
SAMPLES = (4, 8, 16, 32)  # the `_hfx_avgK.yaml` files (8: hfx_toy_arith_avg8)


def samples_file(k: int) -> str:
    metrics = "".join(f"  - {{metric: {m}, aggregation: mean, higher_is_better: true}}\n" for m in metric_names(k))
    return (
        f"# K = {k} samples per problem: avg@{k}, maj@{k} and unbiased pass@k (metric_names({k}) in "
        "hf_extrapolate/evaluation/grading.py).\n"
        f"include: _hfx_sampling.yaml\nrepeats: {k}\nfilter_list:\n  - name: samples\n    filter:\n"
        f"      - function: take_first_k\n        k: {k}\nmetric_list:\n{metrics}"
    )


def task_file(task: str, k: int) -> str:
    return (
        f"# {task} with the paper-faithful sampling setting, {k} samples per problem.\n"
        f"include: [{task}.yaml, _hfx_avg{k}.yaml]\ntask: {task}_avg{k}\n"
    )


def variants() -> dict[Path, str]:
    files = {TASKS / f"_hfx_avg{k}.yaml": samples_file(k) for k in SAMPLES}
    files |= {TASKS / f"{task}_avg{k}.yaml": task_file(task, k) for task, ks in GRID.items() for k in ks}
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = [path for path, text in variants().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(TASKS.parent)} differs from what {Path(__file__).name} writes", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(variants()[path])
        print(f"wrote {path.relative_to(TASKS.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
