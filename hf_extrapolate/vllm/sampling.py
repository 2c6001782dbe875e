"""Per-request extrapolation settings for the vLLM pair, and the guard on vLLM's own sampler settings.

A request may override the folder's settings with ``SamplingParams(extra_args={"extrapolation": {"gamma": 0.5}})``
(any `ExtrapolationConfig` field), or over HTTP with flat keys, ``"vllm_xargs": {"extrapolation_gamma": 0.5}``.
`PairRequests`, a V1 logits processor that the pair's config hook adds to every engine serving a pair, checks each
request at admission and tracks, in the worker, which batch row carries which settings;
`ExtrapolatedPairForCausalLM.compute_logits` reads them through `row_settings`. This relies on the logits rows
following the batch order, which holds without speculative decoding (vLLM refuses custom logits processors with
speculative decoding).

Where the pair warps its own distribution (selective mode always; full mode with temperature or top-p set), vLLM's
sampler must leave it alone: temperature 1 (or 0: the argmax of that distribution, as `generate(do_sample=False)`
takes it), top-p 1, no top-k, no min-p. Other requests are refused with one line saying what to send.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..configuration import ExtrapolationConfig

EXTRA_ARGS_KEY = "extrapolation"
# the settings of the pair the engines of this process serve, for admission checks (set by `PairConfigHook`)
_SERVED: list[ExtrapolationConfig] = []


class _Rows(dict):
    """Worker side: {batch row: settings} for the rows whose request overrides the folder's, and the batch size."""

    batch_size = 0


# id(pair config) -> its rows (the model and the logits processor of one engine share the config object)
_ROWS: dict[int, _Rows] = {}


def warps(settings: ExtrapolationConfig) -> bool:
    """True when the settings apply their own temperature / top-p (so vLLM's sampler must not apply any)."""
    return settings.select is not None or settings.temperature != 1 or settings.top_p != 1


def request_settings(params: SamplingParams, folder: ExtrapolationConfig) -> ExtrapolationConfig | None:
    """The request's own settings over the folder's, or None if it has none: ``extra_args["extrapolation"]`` (a
    dict) and flat ``extra_args["extrapolation_<field>"]`` keys (what an HTTP request's ``vllm_xargs`` can carry)."""
    extra = params.extra_args or {}
    nested = extra.get(EXTRA_ARGS_KEY) or {}
    if not isinstance(nested, dict):
        raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be a dict of extrapolation settings, got {nested!r}")
    prefix = f"{EXTRA_ARGS_KEY}_"
    own = {**nested, **{key[len(prefix) :]: value for key, value in extra.items() if key.startswith(prefix)}}
    return ExtrapolationConfig.from_dict({**folder.to_dict(), **own}) if own else None


def check_sampler(params: SamplingParams, settings: ExtrapolationConfig) -> None:
    """Refuse vLLM sampler settings that would warp a distribution the pair has already warped itself."""
    if not warps(settings):
        return
    conflicts = {
        "temperature": params.temperature not in (0.0, 1.0),
        "top_p": params.top_p != 1.0,
        "top_k": params.top_k not in (0, -1),
        "min_p": params.min_p != 0.0,
    }
    bad = [f"{name}={getattr(params, name)}" for name, wrong in conflicts.items() if wrong]
    if bad:
        mode = "selective" if settings.select is not None else "full"
        raise ValueError(
            f"this pair samples with its own temperature={settings.temperature}, top_p={settings.top_p} ({mode} "
            f"mode), so vLLM's sampler must not warp again: got {', '.join(bad)}; send temperature=1 (0 for greedy), "
            f"top_p=1, top_k=-1, min_p=0, and put other values in extra_args={{'{EXTRA_ARGS_KEY}': {{...}}}}"
        )


class PairRequests(LogitsProcessor):
    """Admission checks and per-row settings for the vLLM pair; it never changes the logits itself."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        if not _SERVED:
            return
        folder = _SERVED[-1]
        own = request_settings(sampling_params, folder)
        if own is not None and sampling_params.prompt_logprobs is not None:
            raise ValueError("per-request extrapolation settings do not reach prompt_logprobs: set them in the folder")
        check_sampler(sampling_params, own or folder)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        config = vllm_config.model_config.hf_config
        self.folder: ExtrapolationConfig | None = getattr(config, "settings", None)
        self.rows = _Rows() if self.folder is not None else None
        if self.rows is not None:  # a fresh table: an id may be reused by a config of an engine since closed
            _ROWS[id(config)] = self.rows

    def is_argmax_invariant(self) -> bool:
        return True  # `apply` is the identity; the settings act in the model's compute_logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.rows is not None:
            process_dict_updates(self.rows, batch_update, lambda params, _prompt, _out: self._own(params))
            if batch_update is not None:
                self.rows.batch_size = batch_update.batch_size

    def _own(self, params: SamplingParams) -> ExtrapolationConfig | None:
        own = request_settings(params, self.folder)
        return None if own is None or own == self.folder else own

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


def row_settings(config: Any, logits: torch.Tensor) -> dict[ExtrapolationConfig, torch.Tensor] | None:
    """``{settings: row indices}`` for the sampled rows of a batch's ``logits``, or None when every row takes the
    folder's settings (also for calls that are not one row per request: prompt logprobs, warm-up runs)."""
    own = _ROWS.get(id(config))
    rows = logits.shape[0]
    if not own or rows != own.batch_size:
        return None
    folder = config.settings
    groups: dict[ExtrapolationConfig, list[int]] = {}
    for row in range(rows):
        groups.setdefault(own.get(row, folder), []).append(row)
    return {settings: torch.tensor(index, device=logits.device) for settings, index in groups.items()}
