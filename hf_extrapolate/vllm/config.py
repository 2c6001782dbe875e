"""`VllmPairConfig`: a pair folder's config as vLLM reads it, with both members' configs inside."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from ..configuration import ExtrapolatedConfig, ExtrapolationConfig

# member architectures whose vLLM classes the pair builds on (both halves must be the same one)
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
# fields both members must share: they fix the attention layout, so that one KV cache spec serves both halves
SHARED_SHAPES = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def member_location(folder: str, name: str | None, role: str) -> str:
    """Where a member lives: a path relative to a local pair ``folder``, else the name itself (absolute path or
    Hub id)."""
    if not name:
        raise ValueError(f"{folder}: config.json names no {role} model")
    local = Path(folder) / name
    return str(local) if not Path(name).is_absolute() and local.is_dir() else name


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_members(rl: PretrainedConfig, base: PretrainedConfig) -> None:
    """Refuse member families the pair cannot build, and members whose attention shapes disagree."""
    for role, config in (("RL", rl), ("base", base)):
        arch = (config.architectures or ["(none)"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"the vLLM pair supports {' and '.join(SUPPORTED_ARCHITECTURES)} members; the {role} model "
                f"{config.name_or_path!r} is {arch}: use the transformers route for it"
            )
    diff = [(k, getattr(rl, k, None), getattr(base, k, None)) for k in SHARED_SHAPES]
    diff += [("architectures", rl.architectures[0], base.architectures[0]), ("head_dim", head_dim(rl), head_dim(base))]
    diff = [d for d in diff if d[1] != d[2]]
    if diff:
        shown = ", ".join(f"{k} {a} vs {b}" for k, a, b in diff)
        raise ValueError(f"the RL and base models of a vLLM pair must share their shapes; they differ in {shown}")
    check_head_dim(head_dim(rl))


def check_head_dim(size: int) -> None:
    """On vLLM's CPU platform, refuse a head_dim its attention backend lacks, with one line (vLLM's own error comes
    from deep inside engine start)."""
    if importlib.util.find_spec("vllm") is None:  # the config read without vLLM (tools, tests): nothing to check
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if size not in sizes:
        raise ValueError(
            f"vLLM's CPU attention supports head_dim {', '.join(map(str, sizes))}; these models have {size}: use the "
            "transformers route on this machine (the toy pair: train-toy --set num_heads=3 gives head_dim 32)"
        )


class VllmPairConfig(ExtrapolatedConfig):
    """`ExtrapolatedConfig` plus both members' configs: ``text_config`` (the RL model's, which vLLM reads for the
    pair's shapes, vocabulary and context length) and ``base_config``.

    vLLM builds it through `AutoConfig` (see `hf_extrapolate.vllm.register`); `from_dict` then reads both members'
    configs from the locations the folder names.
    """

    sub_configs: ClassVar[dict[str, Any]] = {"text_config": AutoConfig, "base_config": AutoConfig}

    text_config: dict | PretrainedConfig | None = None
    base_config: dict | PretrainedConfig | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        for name in ("text_config", "base_config"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, CONFIG_MAPPING[value["model_type"]](**value))
        super().__post_init__(**kwargs)

    @property
    def settings(self) -> ExtrapolationConfig:
        return ExtrapolationConfig.from_dict(self.extrapolation or {})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("name_or_path", str(pretrained_model_name_or_path))  # as AutoConfig passes it
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        folder = str(kwargs.get("name_or_path") or config_dict.get("_name_or_path") or ".")
        out = super().from_dict(config_dict, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if config.text_config is None or config.base_config is None:
            config.text_config, config.base_config = (
                AutoConfig.from_pretrained(member_location(folder, name, role))
                for name, role in ((config.rl_model_name_or_path, "RL"), (config.base_model_name_or_path, "base"))
            )
        check_members(config.text_config, config.base_config)
        config.settings  # noqa: B018 (validates the folder's extrapolation settings now, with one clear line)
        return out
