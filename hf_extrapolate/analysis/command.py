"""`hf-extrapolate analyze`: where RLVR changed the model (Δlog p vs entropy and KL) and token replacement."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ..commands import add_pair_arguments, dry_run, load_from_args, resolve_pair
from ..outputs import check_output_folder, output_folder, settings_key
from .experiment import (
    DEFAULT_SHARES,
    DIRECTIONS,
    SWEEP_CHOICES,
    SWEEP_METRICS,
    Grader,
    PromptFn,
    Sampling,
    check_sweep,
    run_analysis,
)
from .report import recovery_shares, write_report
from .seeds import write_seeds_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="Δlog p vs entropy and KL on a model pair, and the token-replacement experiment",
        description=(
            "Sample responses from the base and the RL model, compare per-token Δlog p, entropy and KL on them "
            "(histograms), then run token replacement: one model generates and, where a metric flags a token, "
            "it is resampled from the other model; accuracy is plotted against the share of replaced tokens. "
            "Writes analysis.json, tokens.npz, distributions.png, replacement.png and summary.md to --out."
        ),
    )
    add_pair_arguments(p, settings=False)
    p.add_argument("--data", required=True, help="'toy', or a JSONL file with 'problem' and 'answer' on each line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--n-problems", type=int, default=64, help="number of problems (default 64)")
    p.add_argument("--samples", type=int, default=4, help="responses per problem and run (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default 256")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="top-p of every run (the paper uses 0.7; default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems (toy) and of sampling (default 0)")
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED",
        help="with the toy pair: analyse the pair of each seed (its problems and sampling seeded alike) into "
        "OUT/seed-N, then write the claims over seeds (seeds.md, seeds.json, recovery_over_seeds.png); a seed "
        "already analysed with these settings is reused",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    p.add_argument("--metrics", default=",".join(SWEEP_METRICS), help=f"flags to sweep, from {','.join(SWEEP_CHOICES)}")
    p.add_argument(
        "--shares", default=",".join(map(str, DEFAULT_SHARES)),
        help="target shares of flagged tokens; each metric's threshold is the matching quantile on the proposer's "
        "own responses",
    )  # fmt: skip
    p.add_argument("--directions", default=",".join(DIRECTIONS), help="forward (base generates), reverse, or both")
    p.add_argument(
        "--grader",
        help="MODULE:FUNCTION taking (completion, answer) and returning a bool; default: math-verify on the "
        "last \\boxed{}, as eval grades",
    )
    p.set_defaults(func=run)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"--{name} must be >= 1, got {value}")
    return value


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _shares(text: str) -> list[float]:
    try:
        return [float(x) for x in _list(text)]
    except ValueError:
        raise ValueError(f"--shares must be comma-separated numbers, got {text!r}") from None


def paper_prompt(problem: str, tokenizer: Any) -> str:
    """The paper's prompt, as the ``hfx_*`` evaluation tasks build it (`grading.user_message` in the chat template
    when the tokenizer has one)."""
    from hf_extrapolate.evaluation.grading import build_prompt, user_message

    return build_prompt(tokenizer, user_message(problem))


def load_data(data: str, n: int, seed: int, grader: str | None) -> tuple[list[dict[str, Any]], Grader, PromptFn]:
    """Problems with their grader and prompt: the toy task's own test problems for ``toy``, or a JSONL file read
    as ``eval`` reads it (`evaluation.tasks.read_problems`); the paper's prompt and grader (math-verify on the last
    ``\\boxed{}``, `grading.is_correct`) for both. ``grader`` (``MODULE:FUNCTION``) replaces the default grading."""
    from hf_extrapolate.evaluation.grading import is_correct

    if data == "toy":
        from hf_extrapolate.toy.task import format_prompt, make_problems

        problems, prompt = make_problems("test", n, seed=seed), format_prompt
    else:
        from hf_extrapolate.evaluation.tasks import read_problems

        if not Path(data).is_file():
            raise ValueError(f"--data must be 'toy' or an existing JSONL file; {data!r} is neither")
        problems, prompt = read_problems(data, n), paper_prompt
    if grader is None and importlib.util.find_spec("math_verify") is None:
        raise ValueError("the default grading needs math-verify: pip install 'hf-extrapolate[eval]', or pass --grader")
    return problems, resolve_grader(grader) if grader is not None else is_correct, prompt


def resolve_grader(spec: str) -> Grader:
    """The function named by ``MODULE:FUNCTION``."""
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name) if name else None
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--grader {spec!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise ValueError(f"--grader must name a function as MODULE:FUNCTION, got {spec!r}")
    return fn


def command_line(args: argparse.Namespace) -> str:
    """The full command, every option spelled out, for the report."""
    parts = ["hf-extrapolate", "analyze"]
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if key in ("func", "command") or value is None or value is False or (key == "seed" and args.seeds):
            continue
        parts += (
            [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
        )
    return shlex.join(parts)


def _sampling(args: argparse.Namespace, seed: int) -> Sampling:
    return Sampling(
        samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=seed, batch_size=args.batch_size,
    )  # fmt: skip


def _analyse(args: argparse.Namespace, seed: int, out: Path, command: str) -> tuple[dict[str, Any], list[Path]]:
    """The analysis of the pair in ``args.rl``/``args.base`` with problems and sampling of ``seed``, written into
    ``out``: the result and the files."""
    problems, grader, prompt = load_data(args.data, args.n_problems, seed, args.grader)
    rl_model, base_model, tokenizer = load_from_args(args)
    result = run_analysis(
        rl_model, base_model, tokenizer, problems, grader, prompt, _sampling(args, seed),
        metrics=_list(args.metrics), shares=_shares(args.shares), directions=_list(args.directions),
    )  # fmt: skip
    return result, write_report(result, out, command)


ANALYSIS_VERSION = 1  # part of a seed's cache key: bump it when a change here changes what a seed's run gives


def _seed_folder(args: argparse.Namespace, seed: int) -> Path:
    """The cached analysis of one seed's toy pair, run now unless this exact run is already cached."""
    from ..toy import pair_paths

    rl, base = pair_paths(seed=seed)
    seed_args = argparse.Namespace(**{**vars(args), "rl": str(rl), "base": str(base), "seed": seed, "seeds": None})
    settings = {k: v for k, v in sorted(vars(seed_args).items()) if k not in ("func", "out", "overwrite", "dry_run")}
    cached = rl.parent / "results" / f"analyze-{rl.name}-{settings_key(ANALYSIS_VERSION, settings)}"
    if (cached / "analysis.json").is_file():
        print(f"hf-extrapolate analyze: seed {seed} already analysed; reusing {cached}", file=sys.stderr)
        return cached
    with output_folder(cached, overwrite=True) as tmp:  # whole or not at all: an interrupted seed runs again
        _analyse(seed_args, seed, tmp, command_line(seed_args))
    return cached


def run_seeds(args: argparse.Namespace) -> int:
    """`analyze --seeds`: one analysis per seed's toy pair (cached, so a stopped run resumes), then over seeds."""
    seeds = list(dict.fromkeys(args.seeds))
    results, folders = {}, {}
    for i, seed in enumerate(seeds):
        print(f"hf-extrapolate analyze: seed {seed} ({i + 1} of {len(seeds)})", file=sys.stderr, flush=True)
        folders[seed] = _seed_folder(args, seed)
        results[seed] = json.loads((folders[seed] / "analysis.json").read_text())
    out = Path(args.out)
    with output_folder(out, overwrite=args.overwrite) as tmp:
        for seed, folder in folders.items():
            shutil.copytree(folder, tmp / f"seed-{seed}")
        paths = [out / p.name for p in write_seeds_report(results, tmp, command_line(args))]
    print((out / "seeds.md").read_text().split("\n![")[0])
    print("wrote " + ", ".join(str(p) for p in paths) + f" and {', '.join(f'seed-{s}' for s in seeds)}/")
    return 0


def run(args: argparse.Namespace) -> int:
    for name in ("n_problems", "samples", "max_new_tokens", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.rl is None and args.base is None and args.data != "toy":
        raise ValueError("--rl and --base are required unless --data toy")
    if args.seeds is not None and (args.rl or args.base or args.data != "toy"):
        raise ValueError("--seeds analyses the toy pair of each seed: use it with --data toy and without --rl/--base "
                         "(for one pair, --seed sets the sampling seed)")  # fmt: skip
    check_sweep(_list(args.metrics), _shares(args.shares), _list(args.directions))
    load_data(args.data, args.n_problems, args.seed, args.grader)  # a bad --data or --grader fails before any work
    if args.dry_run:
        return dry_run(args, tokens=args.max_new_tokens)
    check_output_folder(args.out, overwrite=args.overwrite)  # before the toy training and sampling (hours)
    if args.seeds is not None:
        return run_seeds(args)
    args.rl, args.base = resolve_pair(args)
    with output_folder(args.out, overwrite=args.overwrite) as tmp:
        result, written = _analyse(args, args.seed, tmp, command_line(args))
    paths = [Path(args.out) / p.name for p in written]
    ref = result["reference"]
    print(f"accuracy: base {ref['base']['accuracy']:.3f}, RL {ref['rl']['accuracy']:.3f}")
    for direction, shares in recovery_shares(result).items():
        shown = ", ".join(f"{m} {'-' if v is None else f'{100 * v:.1f}%'}" for m, v in shares.items())
        print(f"{direction}: share replaced for 90% of the gap: {shown}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
