"""``hf-extrapolate eval``: lm-eval's own command line, with the ``hfx`` model type and the ``hfx_*`` tasks available.

Every argument after ``eval`` goes to lm-eval unchanged (``hf-extrapolate eval --help`` prints lm-eval's help).
When no ``--include_path`` is given and the project's ``eval_tasks/`` folder exists beside the package (a source
checkout or editable install), it is added so that the ``hfx_*`` tasks are found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[2] / "eval_tasks"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command; ``prefix_chars="+"`` lets every ``--option`` through to lm-eval."""
    parser = subparsers.add_parser(
        "eval",
        help="run lm-evaluation-harness with the hfx model type (rl=, base=, gamma=, ...) and the hfx_* tasks",
        description=__doc__,
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm-eval (run, ls, validate)")
    parser.set_defaults(func=run)


def with_task_dir(argv: list[str]) -> list[str]:
    """`argv` plus ``--include_path <checkout>/eval_tasks`` unless it asks for help or names an include path."""
    if not argv or {"-h", "--help", "--include_path"} & set(argv) or not TASKS_DIR.is_dir():
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


def run(args: argparse.Namespace) -> int:
    """Register ``hfx`` with lm-eval, then hand the arguments to lm-eval's command line."""
    import lm_eval.models  # noqa: F401  (fills lm-eval's model registry; it is only filled lazily while empty)
    from lm_eval.__main__ import cli_evaluate

    from hf_extrapolate.evaluation import lm_eval_model  # noqa: F401  (registers --model hfx)

    sys.argv = ["lm-eval", *with_task_dir(args.lm_eval_args)]
    cli_evaluate()
    return 0
