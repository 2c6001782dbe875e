"""Shared fixtures: tiny causal LMs built from configs and the locally built tokenizer (nothing downloaded)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from hf_extrapolate.toy.tokenizer import build_tokenizer


def tiny_model(arch: str = "llama", vocab_size: int = 103, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-layer causal LM (RoPE Llama, or GPT-2 with absolute positions)."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
            initializer_range=0.2,
        )
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random init is near-uniform; sharpen it so distributions differ visibly
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def perturbed(model: PreTrainedModel, scale: float = 0.3, seed: int = 1, vocab_size: int | None = None):
    """A copy of `model` with noise added to every weight: a stand-in for an RL-tuned relative."""
    torch.manual_seed(seed)
    config = model.config.__class__.from_dict(model.config.to_dict())
    if vocab_size is not None:
        config.vocab_size = vocab_size
    other = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        src = model.state_dict()
        for name, p in other.state_dict().items():
            q = src[name]
            rows = min(p.shape[0], q.shape[0]) if p.dim() else None
            if rows is not None and p.shape != q.shape:
                p.normal_(0, 1)
                p[:rows] = q[:rows]
            else:
                p.copy_(q)
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * scale * (p.std() if p.numel() > 1 else 1.0))
    return other.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def pair():
    """(rl_model, base_model): a tiny Llama and a perturbed copy of it, same vocabulary."""
    base = tiny_model("llama", seed=0)
    return perturbed(base), base


def save_pair(pair: tuple[PreTrainedModel, PreTrainedModel], tokenizer, root: Path) -> Path:
    """``(rl, base)`` saved as ordinary model folders ``root/rl`` and ``root/base``, each with the tokenizer."""
    for name, model in zip(("rl", "base"), pair):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def pair_dir(pair, tokenizer, tmp_path_factory):
    """`pair` saved as ordinary model folders, ``rl/`` and ``base/`` (see `save_pair`)."""
    return save_pair(pair, tokenizer, tmp_path_factory.mktemp("pair"))


def folder_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder``: hash it before and after a command that writes."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a server the test started: SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def default_sigint() -> None:
    """`preexec_fn` for a child the test will Ctrl-C: restore SIGINT's default action, as a terminal has it. A job
    started in the background (`cmd &` in a script, `nohup`) begins with SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
