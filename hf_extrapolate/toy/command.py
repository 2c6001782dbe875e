"""`hf-extrapolate train-toy`: train (or reuse) the toy base/RLVR pair."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REWEIGHT_CHOICES = ("direction", "dominate", "none")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-toy", help="train (or reuse) the toy base/RLVR pair")
    p.add_argument("--out", help="also copy the pair to OUT/base and OUT/rl (default: only the cache)")
    p.add_argument("--reweight", choices=REWEIGHT_CHOICES, default="none", help="GRPO token reweighting (paper §3)")
    p.add_argument("--reweight-c", type=float, default=0.2, help="c in w = 1 + c − c·π_old (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="pair cache (default: $HF_EXTRAPOLATE_HOME or ~/.cache/hf_extrapolate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.reweight_c <= 1:
        raise ValueError(f"--reweight-c must be in [0, 1], got {args.reweight_c}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    from hf_extrapolate.toy.train import pair_paths

    reweight = None if args.reweight == "none" else args.reweight
    rl, base = pair_paths(args.seed, root=args.cache_dir, reweight=reweight, reweight_c=args.reweight_c)
    if out is not None:
        for src, name in ((base, "base"), (rl, "rl")):
            shutil.copytree(src, out / name)
        rl, base = out / "rl", out / "base"
    print(f"base model: {base}\nRL model:   {rl}")
    return 0
