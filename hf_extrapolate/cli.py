"""`hf-extrapolate` console script: one sub-command per module, each module adds its own parser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hf_extrapolate.extras import MissingExtraError

# sub-command -> ("module" exposing `register(subparsers)`, or "module:function", one-line help);
# a command's module is imported only when that command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("hf_extrapolate.toy.quickstart", "train or reuse the toy pair; compare base, RL, extrapolation"),
    "generate": ("hf_extrapolate.commands:register_generate", "generate from an extrapolated pair, streamed"),
    "export": ("hf_extrapolate.commands:register_export", "write a pair folder for AutoModelForCausalLM / lm_eval"),
    "eval": ("hf_extrapolate.evaluation.command", "run lm-evaluation-harness with the hfx model type and hfx_* tasks"),
    "tasks-path": ("hf_extrapolate.evaluation.command:register_tasks_path", "print the hfx_* task folder (lm_eval)"),
    "analyze": ("hf_extrapolate.analysis.command", "Δlog p vs entropy and KL on a model pair, and token replacement"),
    "train-toy": ("hf_extrapolate.toy.command", "train (or reuse) the toy base/RLVR pair"),
    "bench": ("hf_extrapolate.bench", "decoding speed and peak memory of extrapolation against the RL model alone"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-extrapolate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (target, help_text) in COMMANDS.items():
        if name == wanted:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(module), function or "register")(sub)
        else:  # `--help` lists every command without importing the heavy modules behind them
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, MissingExtraError) as err:  # bad input or a missing extra: one line
        if os.environ.get("HFX_DEBUG"):
            raise
        print(f"hf-extrapolate {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
