"""Loading a base/RL pair with the ecosystem's own options (dtype, device_map, bitsandbytes), and checks."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel


def check_tokenizers(rl_tokenizer: Any, base_tokenizer: Any, rl_name: str = "RL", base_name: str = "base") -> None:
    """Refuse a pair whose tokenizers differ: extrapolation needs one vocabulary, and a token only one of them
    knows (an added chat token, say) would reach a model that cannot embed it."""
    rl_vocab, base_vocab = rl_tokenizer.get_vocab(), base_tokenizer.get_vocab()
    if rl_vocab != base_vocab:
        diff = sorted(set(rl_vocab.items()) ^ set(base_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"the tokenizers of {rl_name!r} ({len(rl_vocab)} tokens) and {base_name!r} ({len(base_vocab)} "
            f"tokens) disagree (e.g. {diff}); Δlog p extrapolation needs both models to share one tokenizer"
        )


def quantization(
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    quantization_config: Any = None,
    *,
    command_line: bool = False,
) -> BitsAndBytesConfig | Any:
    """The `quantization_config` for `from_pretrained`, refusing combinations that cannot run here (naming the
    options as the command line spells them when ``command_line``)."""
    four, eight, dtype = ("--load-in-4bit", "--load-in-8bit", "--dtype bfloat16") if command_line else (
        "load_in_4bit", "load_in_8bit", "dtype='bfloat16'")  # fmt: skip
    if load_in_4bit and load_in_8bit:
        raise ValueError(f"choose one of {four} and {eight}, not both")
    if (load_in_4bit or load_in_8bit) and quantization_config is not None:
        raise ValueError(f"pass either quantization_config or {four}/{eight}, not both")
    if not (load_in_4bit or load_in_8bit):
        return quantization_config
    if not torch.cuda.is_available():
        raise ValueError(
            f"bitsandbytes 4-bit/8-bit loading needs a CUDA GPU and none is visible; drop {four}/{eight} "
            f"(or use {dtype}) on this machine"
        )
    if load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def check_location(name_or_path: str, role: str) -> None:
    """A file where a model folder is expected, or a local-looking path that does not exist (a typo, not a hub
    id): say so plainly."""
    path = os.path.expanduser(str(name_or_path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"the {role} model {name_or_path!r} is a file, not a model folder; give its folder")
    if str(name_or_path).startswith(("/", ".", "~")) and not os.path.isdir(path):
        raise ValueError(f"the {role} model folder {name_or_path!r} does not exist")


# options that say where files come from, for the models and their tokenizers alike (transformers' names)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "token")
# where a model loaded by `load_model` came from, ``(name_or_path, revision, subfolder)``: `save_pretrained` records it
SOURCE_ATTR = "_hfx_source"


def check_dtype(dtype: str | torch.dtype | None, option: str = "dtype") -> None:
    """Refuse a ``dtype`` that is neither ``None``, ``"auto"``, a `torch.dtype` nor the name of one (``bfloat16``)."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return
    name = str(dtype).removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"{option} {dtype!r} is not a torch dtype; use auto, bfloat16, float16 or float32")


def _cuda_index(device: Any) -> int | None:
    """The CUDA device index that ``device`` (``cuda``, ``cuda:1``, ``1``, a `torch.device`) names, else None."""
    if isinstance(device, int) or str(device).isdigit():
        return int(device)
    kind, _, index = str(device).partition(":")
    return (int(index) if index.isdigit() else 0) if kind == "cuda" else None


def check_device_map(device_map: str | int | dict | None, option: str = "device_map") -> None:
    """Refuse CUDA devices this machine does not have (``cuda:7`` with 2 GPUs, ``cuda`` with none), in a device
    map given as one device or as a ``{module: device}`` dict, before any weights are read."""
    if device_map is None:
        return
    count = torch.cuda.device_count()
    for device in device_map.values() if isinstance(device_map, dict) else [device_map]:
        index = _cuda_index(device)
        if index is not None and index >= count:
            have = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
            raise ValueError(f"{option} {device_map!r} needs CUDA device {index}, but torch sees {have}; "
                             "use cpu or auto")  # fmt: skip


def load_model(name_or_path: str, role: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with one clear error line when the model cannot be found.

    The ``revision`` and ``subfolder`` it was loaded with are kept on the model (``SOURCE_ATTR``), since transformers
    keeps only ``name_or_path``: a pair saved later names the same weights.
    """
    check_location(name_or_path, role)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load the {role} model {name_or_path!r}: {first}") from err
    revision, subfolder = kwargs.get("revision"), kwargs.get("subfolder")
    name = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else str(name_or_path)  # cwd may change
    setattr(model, SOURCE_ATTR, (name, str(revision) if revision else None, subfolder or None))
    return model


def load_tokenizer(name_or_path: str, role: str, **kwargs: Any) -> Any:
    check_location(name_or_path, role)
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
    revision: str | None = None,
    subfolder: str = "",
    base_revision: str | None = None,
    base_subfolder: str = "",
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedModel, Any]:
    """Load ``(rl_model, base_model, tokenizer)`` with the same options for both models.

    ``base_device_map`` places the base model apart from the RL model (another GPU, say); it defaults to
    ``device_map``. ``load_in_4bit`` / ``load_in_8bit`` go through bitsandbytes' `BitsAndBytesConfig`. The
    two tokenizers must agree (`check_tokenizers`); the RL model's tokenizer is returned.

    ``revision`` / ``subfolder`` locate the RL model in its repository, ``base_revision`` / ``base_subfolder`` the
    base model in its own (no default from the other: they are different repositories). ``cache_dir``, ``token``,
    ``local_files_only``, ``force_download`` and ``proxies`` apply to both models and both tokenizers.
    """
    check_dtype(dtype)
    check_device_map(device_map)
    check_device_map(base_device_map, "base_device_map")
    quant = quantization(load_in_4bit, load_in_8bit, quantization_config)
    if quant is not None and device_map is None:
        device_map = "auto"
    hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
    where = {
        role: dict(revision=rev, subfolder=sub or "", trust_remote_code=trust_remote_code, **hub)
        for role, rev, sub in (("RL", revision, subfolder), ("base", base_revision, base_subfolder))
    }
    tokenizer = load_tokenizer(rl, "RL", **where["RL"])
    check_tokenizers(tokenizer, load_tokenizer(base, "base", **where["base"]), rl, base)
    common = dict(dtype=dtype, quantization_config=quant, **kwargs)
    rl_model = load_model(rl, "RL", device_map=device_map, **where["RL"], **common)
    base_model = load_model(base, "base", device_map=base_device_map or device_map, **where["base"], **common)
    return rl_model, base_model, tokenizer


BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "nf4": 0.5}


def model_memory(config: Any, dtype: str = "bfloat16", tokens: int = 4096, batch: int = 1) -> dict[str, float]:
    """Parameters, weight memory for ``dtype`` (``float32``, ``bfloat16``, ``float16``, ``int8``, or ``nf4`` for
    bitsandbytes 4-bit) and KV-cache memory for ``batch`` × ``tokens`` (bf16 cache unless float32), from a config."""
    from accelerate import init_empty_weights

    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"dtype must be one of {', '.join(BYTES_PER_PARAM)}, got {dtype!r}")
    with init_empty_weights():
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    kv = 2 * text.num_hidden_layers * kv_heads * head_dim * (4 if dtype == "float32" else 2) * tokens * batch
    return {"parameters": params, "weights_gib": params * BYTES_PER_PARAM[dtype] / 2**30, "kv_cache_gib": kv / 2**30}


def estimate_memory(
    rl: str, base: str, dtype: str = "bfloat16", tokens: int = 4096, batch: int = 1, trust_remote_code: bool = False
) -> dict[str, Any]:
    """`model_memory` of both models of a pair, from their configs alone (no weights are read), and the total."""
    from transformers import AutoConfig

    report: dict[str, Any] = {"dtype": dtype, "tokens": tokens, "batch": batch}
    for role, name in (("rl", rl), ("base", base)):
        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ValueError(f"cannot read the {role} model's config {name!r}: {str(err).splitlines()[0]}") from err
        report[role] = {"name": name, **model_memory(config, dtype, tokens, batch)}
    report["total_gib"] = sum(report[r]["weights_gib"] + report[r]["kv_cache_gib"] for r in ("rl", "base"))
    return report


def model_device(model: PreTrainedModel) -> torch.device:
    """Where a (possibly sharded) model takes its inputs: the device of its input embeddings."""
    return model.get_input_embeddings().weight.device
