"""`hf-extrapolate train-toy`: train (or reuse) the toy base/RLVR pair."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from hf_extrapolate.outputs import check_output_folder, output_folder

REWEIGHT_CHOICES = ("direction", "dominate", "none")
OWN_FLAGS = ("seed", "reweight", "reweight_c")  # ToySettings fields with a flag of their own


def setting(text: str) -> tuple[str, int | float]:
    """``FIELD=VALUE`` for a numeric `ToySettings` field, the value converted to the field's type."""
    from hf_extrapolate.toy.train import ToySettings

    name, _, value = text.partition("=")
    defaults = {f.name: f.default for f in dataclasses.fields(ToySettings) if f.name not in OWN_FLAGS}
    if name not in defaults:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE with FIELD one of {', '.join(defaults)}")
    try:
        return name, type(defaults[name])(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} takes a {type(defaults[name]).__name__}, got {value!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-toy", help="train (or reuse) the toy base/RLVR pair")
    p.add_argument("--out", help="also copy the pair to OUT/base and OUT/rl (default: only the cache)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--reweight", choices=REWEIGHT_CHOICES, default="none", help="GRPO token reweighting (paper §3)")
    p.add_argument("--reweight-c", type=float, default=0.2, help="c in w = 1 + c − c·π_old (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy pair's data, SFT and GRPO")
    p.add_argument("--cache-dir", help="pair cache (default: $HF_EXTRAPOLATE_HOME, else "
                                       "$XDG_CACHE_HOME/hf_extrapolate, else ~/.cache/hf_extrapolate)")  # fmt: skip
    p.add_argument(
        "--set", type=setting, action="append", default=[], metavar="FIELD=VALUE", dest="settings",
        help="another ToySettings field, e.g. --set grpo_steps=300 (repeatable; a different pair, cached apart)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.reweight_c <= 1:
        raise ValueError(f"--reweight-c must be in [0, 1], got {args.reweight_c}")
    if args.out is not None:  # before the training, which takes minutes
        check_output_folder(args.out, overwrite=args.overwrite)
    from hf_extrapolate.toy.train import pair_paths

    reweight = None if args.reweight == "none" else args.reweight
    rl, base = pair_paths(
        args.seed, root=args.cache_dir, reweight=reweight, reweight_c=args.reweight_c, **dict(args.settings)
    )
    if args.out is not None:
        with output_folder(args.out, overwrite=args.overwrite) as tmp:
            for src, name in ((base, "base"), (rl, "rl")):
                shutil.copytree(src, tmp / name)
        rl, base = Path(args.out) / "rl", Path(args.out) / "base"
    print(f"base model: {base}\nRL model:   {rl}")
    return 0
