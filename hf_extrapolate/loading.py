"""Loading a base/RL pair with the ecosystem's own options (dtype, device_map, bitsandbytes), and checks."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel


def check_tokenizers(rl_tokenizer: Any, base_tokenizer: Any, rl_name: str = "RL", base_name: str = "base") -> None:
    """Refuse a pair whose tokenizers map the shared ids to different tokens (extrapolation needs one vocabulary)."""
    n = min(len(rl_tokenizer), len(base_tokenizer))
    rl_vocab = {t: i for t, i in rl_tokenizer.get_vocab().items() if i < n}
    base_vocab = {t: i for t, i in base_tokenizer.get_vocab().items() if i < n}
    if rl_vocab != base_vocab:
        diff = sorted(set(rl_vocab.items()) ^ set(base_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"the tokenizers of {rl_name!r} ({len(rl_tokenizer)} tokens) and {base_name!r} ({len(base_tokenizer)} "
            f"tokens) disagree (e.g. {diff}); Δlog p extrapolation needs both models to share one tokenizer"
        )


def quantization(
    load_in_4bit: bool = False, load_in_8bit: bool = False, quantization_config: Any = None
) -> BitsAndBytesConfig | Any:
    """The `quantization_config` for `from_pretrained`, refusing combinations that cannot run here."""
    if load_in_4bit and load_in_8bit:
        raise ValueError("choose one of load_in_4bit and load_in_8bit, not both")
    if (load_in_4bit or load_in_8bit) and quantization_config is not None:
        raise ValueError("pass either quantization_config or load_in_4bit/load_in_8bit, not both")
    if not (load_in_4bit or load_in_8bit):
        return quantization_config
    if not torch.cuda.is_available():
        raise ValueError(
            "bitsandbytes 4-bit/8-bit loading needs a CUDA GPU and none is visible; drop load_in_4bit/load_in_8bit "
            "(or use dtype='bfloat16') on this machine"
        )
    if load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(name_or_path: str, role: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with one clear error line when the model cannot be found."""
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load the {role} model {name_or_path!r}: {first}") from err


def load_tokenizer(name_or_path: str, role: str, **kwargs: Any) -> Any:
    try:
        return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"no tokenizer found for the {role} model {name_or_path!r}; save one beside it "
            f"(tokenizer.save_pretrained(...)): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err


def load_pair(
    rl: str,
    base: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    base_device_map: str | dict | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedModel, Any]:
    """Load ``(rl_model, base_model, tokenizer)`` with the same options for both models.

    ``base_device_map`` places the base model apart from the RL model (another GPU, say); it defaults to
    ``device_map``. ``load_in_4bit`` / ``load_in_8bit`` go through bitsandbytes' `BitsAndBytesConfig`. The
    two tokenizers must agree (`check_tokenizers`); the RL model's tokenizer is returned.
    """
    quant = quantization(load_in_4bit, load_in_8bit, quantization_config)
    if quant is not None and device_map is None:
        device_map = "auto"
    tokenizer = load_tokenizer(rl, "RL", trust_remote_code=trust_remote_code)
    check_tokenizers(tokenizer, load_tokenizer(base, "base", trust_remote_code=trust_remote_code), rl, base)
    common = dict(dtype=dtype, quantization_config=quant, trust_remote_code=trust_remote_code, **kwargs)
    rl_model = load_model(rl, "RL", device_map=device_map, **common)
    base_model = load_model(base, "base", device_map=base_device_map or device_map, **common)
    return rl_model, base_model, tokenizer
