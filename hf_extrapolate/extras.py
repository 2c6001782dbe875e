"""Optional dependencies: a plain ``pip install hf-extrapolate`` holds the core (processor, wrapper, generate, export);
evaluation, training, the demo, quantization and vLLM need an extra (``pip install "hf-extrapolate[eval]"``, ...)."""

from __future__ import annotations

import importlib.util

# optional dependency -> the extra of pyproject.toml that installs it (the CLI names it when an import fails)
EXTRAS = {"lm_eval": "eval", "math_verify": "eval", "trl": "train", "datasets": "train", "gradio": "demo",
          "bitsandbytes": "quant", "vllm": "vllm"}  # fmt: skip


class MissingExtraError(ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the ``pip install`` that adds it."""


def require_extra(extra: str, *modules: str, feature: str | None = None) -> None:
    """Raise `MissingExtraError` unless every top-level module in `modules` can be imported.

    Call it before importing an optional dependency, e.g. ``require_extra("train", "trl", "datasets")``. Only
    import specs are looked up (nothing is imported), so the check costs microseconds.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{feature or 'this'} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f'installed: pip install "hf-extrapolate[{extra}]"',
            name=missing[0],
        )
