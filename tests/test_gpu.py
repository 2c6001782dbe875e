"""On a CUDA GPU only (skipped elsewhere): the engine on the GPU against the CPU no-cache reference, a pair split
across devices, and bitsandbytes 4-bit / 8-bit loading through `load_pair`."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_core import PROMPTS, encode, greedy, no_cache_greedy

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM, ExtrapolationConfig, load_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("settings", [{"gamma": 0.5}, {"gamma": 1.0, "select": "delta_logp", "threshold": -0.3,
                                                         "temperature": 0.0}], ids=["full", "selective"])  # fmt: skip
def test_cuda_matches_cpu_no_cache_loop(pair_dir, tokenizer, settings):
    """Processor and wrapper on the GPU (fp32) give the tokens of the CPU loop that recomputes both models."""
    rl, base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), dtype=torch.float32, device_map="cuda")
    cpu_rl, cpu_base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), dtype=torch.float32)
    expected = no_cache_greedy(cpu_rl, cpu_base, tokenizer, ExtrapolationConfig(**settings))
    enc = encode(tokenizer).to("cuda")
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    assert torch.equal(greedy(rl, enc, logits_processor=[proc]).cpu(), expected)
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    assert torch.equal(greedy(wrapper, enc).cpu(), expected)


def test_pair_split_across_devices(pair_dir, tokenizer):
    """RL model on the GPU, base model on the CPU (`base_device_map`): same tokens as both on the CPU."""
    rl, base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), dtype=torch.float32, device_map="cuda",
                            base_device_map="cpu")  # fmt: skip
    assert rl.device.type == "cuda" and base.device.type == "cpu"
    cpu_rl, cpu_base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), dtype=torch.float32)
    split = greedy(rl, encode(tokenizer).to("cuda"), logits_processor=[DeltaLogpExtrapolation(base, 0.5)]).cpu()
    expected = greedy(cpu_rl, encode(tokenizer), logits_processor=[DeltaLogpExtrapolation(cpu_base, 0.5)])
    assert torch.equal(split, expected)  # (BatchEncoding.to moves in place: encode twice)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_pair(pair_dir, tokenizer, bits):
    """`load_pair(load_in_4bit / load_in_8bit)` quantizes both models' linear layers; γ = 0 is then the quantized RL
    model alone (tokens and log-probs), and γ > 0 decodes."""
    import bitsandbytes as bnb

    flag = {"load_in_4bit": True} if bits == 4 else {"load_in_8bit": True}
    rl, base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), device_map="cuda", **flag)
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    for model in (rl, base):
        assert isinstance(model.model.layers[0].self_attn.q_proj, layer)
    enc = encode(tokenizer).to("cuda")
    alone = greedy(rl, enc)
    assert torch.equal(greedy(rl, enc, logits_processor=[DeltaLogpExtrapolation(base, 0.0)]), alone)
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.0, tokenizer=tokenizer)
    torch.testing.assert_close(
        wrapper(**enc).logits.log_softmax(-1), rl(**enc).logits.float().log_softmax(-1), rtol=0, atol=1e-4
    )
    out = greedy(rl, enc, logits_processor=[DeltaLogpExtrapolation(base, 1.0)])
    assert out.shape == (len(PROMPTS), alone.shape[1]) and int(out.max()) < len(tokenizer)
