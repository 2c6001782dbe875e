"""Training-time reweighting along the RLVR direction (paper §3), as a thin subclass of TRL's `GRPOTrainer` whose
knobs are fields of `DirectionalGRPOConfig` (a `GRPOConfig`).

After GRPO has computed the advantages, every response token's advantage is multiplied by
`w = 1 + c − c·π_old(y_t)` ("direction": low-probability tokens, the ones RL moves most, get up to `1 + c`)
or by the paper's baseline `w = c·π_old(y_t) + 1 − c` ("dominate": favours high-probability tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from trl import GRPOConfig, GRPOTrainer

Reweight = Literal["direction", "dominate"]
REWEIGHTS: tuple[str, ...] = ("direction", "dominate")


def direction_weights(old_logprobs: torch.Tensor, c: float) -> torch.Tensor:
    """The paper's token weights `1 + c − c·exp(old_logprobs)`: 1 for a sure token, up to `1 + c` for a rare one."""
    return 1 + c - c * old_logprobs.exp()


def dominate_weights(old_logprobs: torch.Tensor, c: float) -> torch.Tensor:
    """The paper's "Dominate" baseline `c·exp(old_logprobs) + 1 − c`, which favours high-probability tokens."""
    return c * old_logprobs.exp() + 1 - c


@dataclass
class DirectionalGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the paper's token reweighting: ``reweight`` and ``reweight_c``.

    Example::

        args = DirectionalGRPOConfig(output_dir="out", reweight="direction", reweight_c=0.2, loss_type="dapo")
        DirectionalGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...).train()
    """

    reweight: Reweight | None = field(
        default=None,
        metadata={"help": "'direction' (w = 1 + c − c·π_old), 'dominate' (w = c·π_old + 1 − c), or None: plain GRPO"},
    )
    reweight_c: float = field(default=0.2, metadata={"help": "c of the weights, in [0, 1] (weights stay positive)"})

    def __post_init__(self) -> None:
        if self.reweight is not None and self.reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {REWEIGHTS} or None, got {self.reweight!r}")
        if not 0 <= self.reweight_c <= 1:
            raise ValueError(f"reweight_c must be in [0, 1] so that weights stay positive, got {self.reweight_c}")
        super().__post_init__()


class DirectionalGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose per-token advantages are multiplied by `direction_weights` (or `dominate_weights`), as
    its `DirectionalGRPOConfig` says (a plain `GRPOConfig` trains plain GRPO).

    π_old is TRL's `old_per_token_logps` when it computed them (several iterations per batch, or steps that do
    not line up with generation); otherwise π_old is the current policy, and the weights come from the log-probs
    of TRL's own forward for the loss, detached (the same forward, so the same dropout mask; no extra pass).
    Text-only models. With `reweight=None` or `reweight_c=0` the loss is exactly `GRPOTrainer`'s. The mean weight
    over completion tokens is logged as ``reweight/mean_weight``.
    """

    def _compute_loss(self, model, inputs: dict[str, Any]) -> torch.Tensor:
        reweight, c = getattr(self.args, "reweight", None), getattr(self.args, "reweight_c", 0.0)
        if reweight is None or c == 0:
            return super()._compute_loss(model, inputs)
        if "pixel_values" in inputs:
            raise ValueError("DirectionalGRPOTrainer supports text-only models")
        inputs = dict(inputs)
        if inputs.get("old_per_token_logps") is not None:
            inputs["advantages"] = self._weighted_advantages(inputs, inputs["old_per_token_logps"])
            return super()._compute_loss(model, inputs)
        # On policy: GRPOTrainer._compute_loss first computes the policy's log-probs, then reads the advantages.
        # Weigh them in between, from those log-probs detached (TRL's own π_old in this case).
        policy_logps = self._get_per_token_logps_and_entropies

        def logps_then_weigh(*args, **kwargs):
            logps, *rest = policy_logps(*args, **kwargs)
            inputs["advantages"] = self._weighted_advantages(inputs, logps.detach())
            return (logps, *rest)

        self._get_per_token_logps_and_entropies = logps_then_weigh
        try:
            return super()._compute_loss(model, inputs)
        finally:
            del self._get_per_token_logps_and_entropies

    def _weighted_advantages(self, inputs: dict[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
        """The advantages times the configured weights of π_old, (B, T); logs the mean weight over completions."""
        weight_fn = direction_weights if self.args.reweight == "direction" else dominate_weights
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        weights = weight_fn(old_logps.float(), self.args.reweight_c).to(advantages.dtype)
        mask = inputs["completion_mask"].to(weights.dtype)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["reweight/mean_weight"].append((weights * mask).sum().item() / max(mask.sum().item(), 1))
        return advantages * weights
