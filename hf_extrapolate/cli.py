"""`hf-extrapolate` console script: one sub-command per module, each module adds its own parser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-command -> (module exposing `register(subparsers)`, one-line help); modules are imported only when run
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("hf_extrapolate.bench", "decoding speed and peak memory of extrapolation against the RL model alone"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-extrapolate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(module).register(sub)
        else:  # `--help` lists every command without importing the heavy modules behind them
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input: one clear line, no traceback
        if os.environ.get("HFX_DEBUG"):
            raise
        print(f"hf-extrapolate {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
