"""The project's own toy base/RLVR pair: task, tokenizer and training pipeline.

`pair_paths(seed=0, ...) -> (rl_dir, base_dir)` trains the pair on first use and reuses the cached folders after.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # `pair_paths` imports torch and transformers: only load it when asked for
    if name == "pair_paths":
        from hf_extrapolate.toy.train import pair_paths

        return pair_paths
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["pair_paths"]
