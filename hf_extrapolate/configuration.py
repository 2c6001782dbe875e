"""Configuration objects, kept apart from the modules that use them (as in `peft`).

`ExtrapolationConfig` holds the decoding settings and validates them; `ExtrapolatedConfig` is the
`transformers` config of the saved wrapper model, naming both models and carrying the settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from numbers import Real
from typing import Any, Literal

from transformers import PretrainedConfig

Criterion = Literal[
    "delta_logp", "delta_logp_ge", "base_entropy", "rl_entropy", "kl", "reverse_kl", "js", "random", "all", "none"
]
CRITERIA: tuple[str, ...] = Criterion.__args__
# criteria that flag a position when their statistic is >= threshold (delta_logp flags when Δlog p <= threshold)
THRESHOLD_CRITERIA = ("delta_logp", "delta_logp_ge", "base_entropy", "rl_entropy", "kl", "reverse_kl", "js", "random")


# Bounds that keep the combination finite in float32 (FLT_MAX ≈ 2**128). The math module floors finite
# log-probabilities at LOGP_FLOOR = −2**23 (below it float32 no longer resolves one nat), so each weighted term
# |w · log p| ≤ 2**103 · 2**23 = 2**126 and w_rl · log π_RL + w_base · log π_base stays within 2**127 < FLT_MAX.
LOGP_FLOOR = -(2.0**23)
MAX_WEIGHT = 2.0**103
MAX_GAMMA = MAX_WEIGHT / 2  # the weights (−γ, 1 + γ) then stay within MAX_WEIGHT


def _number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, why: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if not low <= value <= high:
        bounds = f">= {low}" if high == math.inf else f"in [{low:.3g}, {high:.3g}]"
        raise ValueError(f"{name} must be {bounds}{why}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExtrapolationConfig:
    """Settings of Δlog p extrapolation (docs/PAPER.md §2).

    Full mode (``select=None``): ``log π_X = log_softmax(w_rl · log π_RL + w_base · log π_base)`` with
    ``(w_base, w_rl) = (−γ, 1 + γ)`` unless ``weights`` is given; γ = 0 is exactly the RL model.

    Selective mode (``select`` set): the proposer (``"base"`` in the paper) proposes a token after
    ``temperature`` and ``top_p``; where ``select`` flags it at ``threshold``, it is resampled from π_X with
    the same temperature and top-p. ``temperature=0`` is the greedy version of the same algorithm.

    Candidate lists, one sentence per mode:

    - ``candidate_top_k=None`` (default): full-vocabulary exact — π_X, Δlog p and every criterion use both models'
      whole distributions.
    - ``candidate_top_k=k``: top-k reference-faithful — each model is seen, as the reference code's vLLM engines
      return it, only through a list of its top-k log-probs plus the token that engine sampled itself, a model's
      missing entries padded with the smallest log-prob in its list; π_X lives on the proposer's list (see
      `hf_extrapolate.extrapolation.combine` for the exact distribution this gives).

    Bounds (float32 stays finite; see ``LOGP_FLOOR``): ``|γ| ≤ 2**102``, each weight ``|w| ≤ 2**103``; any finite
    ``threshold``; any finite ``temperature ≥ 0`` (tempering divides log-probs shifted to a row maximum of 0, so
    it can only underflow to probability 0, never overflow); ``top_p`` in (0, 1].
    """

    # each field's ``help`` is the one description the CLI, lm-eval's --model_args and the demo show
    gamma: float = field(default=0.0, metadata={"help": "γ: weights (w_base, w_rl) = (−γ, 1 + γ); 0 = the RL model"})
    weights: tuple[float, float] | None = field(
        default=None, metadata={"help": "explicit (w_base, w_rl) instead of γ's", "metavar": ("W_BASE", "W_RL")}
    )
    select: Criterion | None = field(
        default=None, metadata={"help": "selective mode: the criterion that flags a proposal"}
    )
    threshold: float | None = field(default=None, metadata={"help": "τ for --select (e.g. -0.3 for delta_logp)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling top-p"})
    proposer: Literal["base", "rl"] = field(default="base", metadata={"help": "who proposes in selective mode"})
    candidate_top_k: int | None = field(default=None, metadata={"help": "reference-code lists: top-k plus own sample"})

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        finite = " (float32 must stay finite: |w · log p| <= 2**126 with log-probs floored at -2**23)"
        set_("gamma", _number("gamma", self.gamma, low=-MAX_GAMMA, high=MAX_GAMMA, why=finite))
        if self.weights is not None:
            if not isinstance(self.weights, (tuple, list)) or len(self.weights) != 2:
                raise ValueError(f"weights must be a pair (w_base, w_rl), got {self.weights!r}")
            set_("weights", tuple(
                _number(f"weights[{i}]", w, low=-MAX_WEIGHT, high=MAX_WEIGHT, why=finite)
                for i, w in enumerate(self.weights)
            ))  # fmt: skip
        if self.select is not None and self.select not in CRITERIA:
            raise ValueError(f"unknown select criterion {self.select!r}; choose one of {', '.join(CRITERIA)}")
        if self.select in THRESHOLD_CRITERIA:
            if self.threshold is None:
                raise ValueError(f"select={self.select!r} needs a threshold")
            set_("threshold", _number("threshold", self.threshold))
            if self.select == "random" and not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"select='random' takes a probability as threshold, in [0, 1]; got {self.threshold}")
        elif self.threshold is not None:
            set_("threshold", _number("threshold", self.threshold))
        set_("temperature", _number("temperature", self.temperature, low=0.0))
        top_p = _number("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        set_("top_p", top_p)
        if self.proposer not in ("base", "rl"):
            raise ValueError(f"proposer must be 'base' or 'rl', got {self.proposer!r}")
        k = self.candidate_top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"candidate_top_k must be a positive integer or None, got {self.candidate_top_k!r}")

    @property
    def model_weights(self) -> tuple[float, float]:
        """``(w_base, w_rl)``: the explicit weights, else ``(−γ, 1 + γ)``."""
        return self.weights if self.weights is not None else (-self.gamma, 1.0 + self.gamma)

    @property
    def is_identity(self) -> bool:
        """True when the settings leave the RL model's distribution unchanged (full mode, γ = 0, no warping)."""
        return self.select is None and self.model_weights == (0.0, 1.0) and self.temperature == 1 and self.top_p == 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = list(self.weights) if self.weights is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtrapolationConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown extrapolation setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


# Sampling settings: each command (and lm-eval task) sets them as its own sampling options, so they are left out
# of the generated extrapolation options (`hf_extrapolate.commands.add_pair_arguments`, lm-eval's --model_args).
SAMPLING_FIELDS = ("temperature", "top_p")


def setting_fields() -> tuple[Any, ...]:
    """The `dataclasses.Field` of every `ExtrapolationConfig` setting except `SAMPLING_FIELDS`, in order."""
    return tuple(f for f in fields(ExtrapolationConfig) if f.name not in SAMPLING_FIELDS)


def extrapolation_config(config: ExtrapolationConfig | float | None = None, **settings: Any) -> ExtrapolationConfig:
    """One `ExtrapolationConfig` from either a config or keyword settings (a number as ``config`` is γ).

    Both at once is refused: the keywords would silently win or lose against the config's fields.
    """
    if isinstance(config, ExtrapolationConfig):
        if settings:
            raise ValueError(
                f"give an ExtrapolationConfig or keyword settings, not both (got {', '.join(sorted(settings))} too); "
                "use dataclasses.replace(config, ...) to change a config"
            )
        return config
    if config is not None:
        if "gamma" in settings:
            raise ValueError(f"gamma given twice: {config!r} positionally and gamma={settings['gamma']!r}")
        settings["gamma"] = config
    return ExtrapolationConfig.from_dict(settings)


class ExtrapolatedConfig(PretrainedConfig):
    """Config of a saved `ExtrapolatedForCausalLM`: where both models live, and the extrapolation settings.

    Each model is named by ``{role}_model_name_or_path`` (a hub id, an absolute local path, or a path relative to
    the saved folder written ``./rl`` or ``../x``), ``{role}_model_revision`` (the hub revision, for hub ids) and
    ``{role}_model_subfolder`` (its folder inside that repository).
    """

    model_type = "hf_extrapolate"

    rl_model_name_or_path: str | None = None
    rl_model_revision: str | None = None
    rl_model_subfolder: str | None = None
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    base_model_subfolder: str | None = None
    extrapolation: dict | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None

    def settings(self, **overrides: Any) -> ExtrapolationConfig:
        """The saved settings with ``overrides`` applied, validated: unknown keys or bad values raise one line."""
        try:
            return ExtrapolationConfig.from_dict({**(self.extrapolation or {}), **overrides})
        except ValueError as err:
            raise ValueError(f"{self.name_or_path or 'config.json'}: {err}") from err
