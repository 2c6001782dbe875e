"""`hf-extrapolate` console script: one sub-command per module, each module adds its own parser."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from hf_extrapolate.extras import EXTRAS

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




DESCRIPTION = """\
Test-time extrapolation along the RLVR direction Δlog p = log π_RL − log π_base, for Hugging Face transformers.
Commands that take --rl/--base use the project's toy pair when both are left out (trained once, cached).
`hf-extrapolate COMMAND --help` describes each command."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and each option's default to its help (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return text
        if "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """Every sub-command's parser: defaults in the help, and errors with the sub-command's own usage."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every ``finally`` (temporary folders) cleans up."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def build_parser(*commands: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top-level parser and its sub-parsers; ``commands`` get their full parsers (their modules imported),
    the others only a name and a line for ``--help``."""
    parser = argparse.ArgumentParser(prog="hf-extrapolate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (target, help_text) in COMMANDS.items():
        if name in commands:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(module), function or "register")(sub)
        else:  # `--help` lists every command without importing the heavy modules behind them
            sub.add_parser(name, help=help_text)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. Bad input (ValueError, OSError, a missing optional dependency): one line and exit 2;
    Ctrl-C: exit 130, SIGTERM: exit 143, with what was already written kept and temporaries removed."""
    argv = sys.argv[1:] if argv is None else argv
    parser, sub = build_parser(*argv[:1])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the sub-command's usage, not the top-level one
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as err:  # bad input or a missing extra: one line, no traceback
        if os.environ.get("HFX_DEBUG"):
            raise
        extra = EXTRAS.get((getattr(err, "name", None) or "").partition(".")[0])
        hint = f'; pip install "hf-extrapolate[{extra}]"' if extra and "pip install" not in str(err) else ""
        print(f"hf-extrapolate {args.command}: error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        sys.stdout.flush()
        print(f"hf-extrapolate {args.command}: {'terminated' if terminated else 'interrupted'}; "
              "results already written are kept", file=sys.stderr)  # fmt: skip
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
