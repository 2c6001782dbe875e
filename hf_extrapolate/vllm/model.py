"""`ExtrapolatedPairForCausalLM`: the base/RL pair as one vLLM model (two of vLLM's own models, one engine)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.models.utils import init_vllm_registered_model
from vllm.sequence import IntermediateTensors

from ..extrapolation import NEG_INF, combine, shared_vocab_size
from .config import VllmPairConfig, member_location
from .sampling import row_settings

# load formats whose weights this class reads itself from the members' folders (dummy: random weights, no reads)
LOAD_FORMATS = ("auto", "hf", "safetensors", "pt", "dummy")


def tokenizer_length(vllm_config: VllmConfig) -> int | None:
    """``len(tokenizer)`` of the pair folder's tokenizer, as the transformers route cuts the vocabulary with it."""
    model_config = vllm_config.model_config
    if model_config.skip_tokenizer_init:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_config.tokenizer, revision=model_config.tokenizer_revision,
        trust_remote_code=model_config.trust_remote_code,
    )  # fmt: skip
    return len(tokenizer)


# one graph for the pair: compiling only the halves would give both halves one compile-cache entry
@support_torch_compile(
    dynamic_arg_dims={"input_ids": {0: "b"}, "positions": {0: "b"}, "intermediate_tensors": 0, "inputs_embeds": 0}
)
class ExtrapolatedPairForCausalLM(nn.Module):
    r"""An RL model and its base model under the prefixes ``rl`` and ``base``, decoding the extrapolated policy.

    ``forward`` runs both halves on the same tokens (vLLM pages, schedules and caches both: each half's attention
    layers are its own) and returns their last hidden states side by side; ``compute_logits`` returns

        log π_X = combine(logits_RL, logits_base)

    (`hf_extrapolate.extrapolation.combine`, with the folder's `ExtrapolationConfig` or a request's own, see
    `hf_extrapolate.vllm.sampling`) on the shared vocabulary, and −inf on the RL model's remaining rows, exactly as
    `ExtrapolatedForCausalLM` does. vLLM's logprobs are therefore log π_X; its sampler draws from π_X.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        if not isinstance(config, VllmPairConfig):
            raise ValueError(f"ExtrapolatedPairForCausalLM needs a pair folder's config, got {type(config).__name__}")
        load_format = vllm_config.load_config.load_format
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"the vLLM pair loads its members with load_format in {LOAD_FORMATS}, not {load_format!r}")
        self.config = config
        self.settings = config.settings
        self.load_config = vllm_config.load_config
        folder = vllm_config.model_config.model
        self.locations = {
            "rl": member_location(folder, config.rl_model_name_or_path, "RL"),
            "base": member_location(folder, config.base_model_name_or_path, "base"),
        }
        self.rl = init_vllm_registered_model(vllm_config, hf_config=config.text_config, prefix=f"{prefix}rl")
        self.base = init_vllm_registered_model(vllm_config, hf_config=config.base_config, prefix=f"{prefix}base")
        self.hidden_size = config.text_config.hidden_size
        self.vocab_size = config.text_config.vocab_size
        self.vocab_width = shared_vocab_size(
            self.vocab_size, config.base_config.vocab_size, tokenizer_length(vllm_config)
        )
        self.make_empty_intermediate_tensors = self.rl.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise ValueError("the vLLM pair embeds tokens in each half; it takes token ids, not prompt embeddings")

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[tokens, 2 · hidden]``: the RL half's last hidden states, then the base half's."""
        if intermediate_tensors is not None or inputs_embeds is not None:
            raise ValueError("the vLLM pair supports neither pipeline parallelism nor prompt embeddings")
        return torch.cat([self.rl(input_ids, positions), self.base(input_ids, positions)], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        rl = self.rl.compute_logits(hidden_states[..., : self.hidden_size])
        base = self.base.compute_logits(hidden_states[..., self.hidden_size :])
        if rl is None:  # a tensor-parallel rank that does not receive the logits
            return None
        width = self.vocab_width
        rl, base = rl[..., :width], base[..., :width]
        per_row = row_settings(self.config, rl)
        if per_row is None:
            logp, _ = combine(rl, base, self.settings)
        else:  # rows grouped by their request's settings: one `combine` per distinct setting
            logp = torch.empty(rl.shape, dtype=torch.float32, device=rl.device)
            for settings, rows in per_row.items():
                logp[rows], _ = combine(rl[rows], base[rows], settings)
        return F.pad(logp, (0, self.vocab_size - width), value=NEG_INF) if width < self.vocab_size else logp

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Read each half's weights from its own member's location; ``weights`` (the pair folder's, which holds
        none) is never read."""
        loader = DefaultModelLoader(self.load_config)
        loaded: set[str] = set()
        for role, half in (("rl", self.rl), ("base", self.base)):
            source = DefaultModelLoader.Source(self.locations[role], revision=None)
            names = half.load_weights(loader._get_weights_iterator(source))
            loaded |= {f"{role}.{name}" for name in names}
        return loaded
