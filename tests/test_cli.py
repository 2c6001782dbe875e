"""The `hf-extrapolate` console script on a tiny local pair: generate, export, bad input, loading options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import perturbed, tiny_model
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_extrapolate import ExtrapolatedForCausalLM, load_pair
from hf_extrapolate.cli import main
from hf_extrapolate.toy.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = tiny_model(seed=0)
    tokenizer = build_tokenizer()
    for name, model in (("base", base), ("rl", perturbed(base)), ("no-tokenizer", base)):
        model.save_pretrained(root / name)
        if name != "no-tokenizer":
            tokenizer.save_pretrained(root / name)
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_extrapolate.cli", *args], capture_output=True, text=True)


def test_generate_streams_text(folders):
    pair = ["--rl", str(folders / "rl"), "--base", str(folders / "base")]
    res = run("generate", *pair, "--gamma", "0.5", "--select", "delta_logp", "--threshold", "-0.3",
              "--prompt", "12+3=", "--max-new-tokens", "12")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "resampled" in res.stdout and len(res.stdout.splitlines()[0]) > 0


def test_export_then_auto_load(folders, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--rl", str(folders / "rl"), "--base", str(folders / "base"), "--gamma", "0.4",
                 "--out", str(out)]) == 0  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert isinstance(model, ExtrapolatedForCausalLM) and model.extrapolation.gamma == 0.4
    rl, base, tok = load_pair(str(folders / "rl"), str(folders / "base"))
    direct = ExtrapolatedForCausalLM(rl, base, gamma=0.4, tokenizer=tok)
    ids = tok(["7*8="], return_tensors="pt").input_ids
    assert torch.equal(model(ids).logits, direct(ids).logits)
    embedded = tmp_path / "embedded"
    assert main(["export", "--rl", str(folders / "rl"), "--base", str(folders / "base"), "--gamma", "0.4",
                 "--out", str(embedded), "--embed-models"]) == 0  # fmt: skip
    assert (embedded / "rl" / "config.json").exists() and (embedded / "base" / "tokenizer.json").exists()
    again = AutoModelForCausalLM.from_pretrained(embedded, trust_remote_code=True)
    assert torch.equal(again(ids).logits, direct(ids).logits)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--prompt", "   "], "--prompt is empty"),
        (["generate", "--prompt", "x", "--select", "random", "--threshold", "2"], "in [0, 1]"),
        (["generate", "--prompt", "x", "--gamma", "nan"], "gamma must be finite"),
        (["export", "--out", "OUT", "--base", "{no-tokenizer}"], "no tokenizer found for the base model"),
        (["generate", "--prompt", "x", "--rl", "/no/such/folder"], "'/no/such/folder' does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(folders, tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "o")).format(**{"no-tokenizer": folders / "no-tokenizer"}) for a in args]
    if "--rl" not in args:
        args += ["--rl", str(folders / "rl")]
    if "--base" not in args:
        args += ["--base", str(folders / "base")]
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_non_numeric_gamma_is_refused_by_the_parser(folders):
    res = run(
        "generate", "--rl", str(folders / "rl"), "--base", str(folders / "base"), "--prompt", "x", "--gamma", "big"
    )
    assert res.returncode == 2 and "invalid float value: 'big'" in res.stderr


def test_mismatched_tokenizers_refused_at_load(folders, tmp_path):
    vocab = build_tokenizer().get_vocab()
    vocab["0"], vocab["1"] = vocab["1"], vocab["0"]
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[])))
    tiny_model(seed=0).save_pretrained(tmp_path / "odd")
    swapped.save_pretrained(tmp_path / "odd")
    res = run("export", "--rl", str(folders / "rl"), "--base", str(tmp_path / "odd"), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "disagree" in res.stderr and str(tmp_path / "odd") in res.stderr


def test_dry_run_estimates_from_configs(folders, capsys):
    assert main(["generate", "--rl", str(folders / "rl"), "--base", str(folders / "base"), "--prompt", "x",
                 "--dry-run", "--dtype", "float32", "--max-new-tokens", "100"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    params = sum(p.numel() for p in tiny_model().parameters())
    assert report["rl"]["parameters"] == report["base"]["parameters"] == params
    assert report["rl"]["weights_gib"] == pytest.approx(params * 4 / 2**30)
    # 2 layers × K and V × 2 kv heads × head dim 8 × 4 bytes × 100 tokens
    assert report["rl"]["kv_cache_gib"] == pytest.approx(2 * 2 * 2 * 8 * 4 * 100 / 2**30)


def test_quantized_loading_needs_a_gpu(folders):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: bitsandbytes can run")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_pair(str(folders / "rl"), str(folders / "base"), load_in_4bit=True)


def test_device_map_with_offload_and_mixed_dtypes(folders, tmp_path):
    """An accelerate device map that offloads one RL layer to disk (its weights sit on the meta device), the base
    model placed by its own map: the pair's log-probs equal those of the plainly loaded pair."""
    layer_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                 "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    rl, base, tok = load_pair(str(folders / "rl"), str(folders / "base"), device_map=layer_map,
                              base_device_map="cpu", dtype=torch.float32, offload_folder=str(tmp_path))  # fmt: skip
    assert rl.hf_device_map == layer_map and rl.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    plain_rl, plain_base, _ = load_pair(str(folders / "rl"), str(folders / "base"))
    ids = tok(["3+4=", "12*5="], return_tensors="pt", padding=True)
    sharded = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok)
    plain = ExtrapolatedForCausalLM(plain_rl, plain_base, gamma=0.5, tokenizer=tok)
    torch.testing.assert_close(sharded(**ids).logits, plain(**ids).logits, rtol=0, atol=1e-5)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(sharded.generate(**ids, **kw), plain.generate(**ids, **kw))

    _, base16, _ = load_pair(str(folders / "rl"), str(folders / "base"), device_map={"": "cpu"}, dtype=torch.bfloat16)
    assert base16.dtype == torch.bfloat16
    out = ExtrapolatedForCausalLM(plain_rl, base16, gamma=0.5, tokenizer=tok)(**ids).logits
    assert out.dtype == torch.float32 and (out - plain(**ids).logits).abs().max() < 0.2


def test_every_option_of_every_command_says_what_it_does() -> None:
    """`COMMAND --help` explains each option (and shows the default where there is one worth showing)."""
    from hf_extrapolate.cli import COMMANDS, build_parser

    _, sub = build_parser(*COMMANDS)
    for name, parser in sub.choices.items():
        silent = [a.option_strings for a in parser._actions if a.option_strings and not (a.help or "").strip()]
        assert not silent, f"hf-extrapolate {name}: options without help {silent}"
    text = " ".join(sub.choices["generate"].format_help().split())  # argparse wraps lines
    assert "0 = the RL model (default: 0.0)" in text and "tokens to generate at most (default: 256)" in text
    assert "--instruction" in text and 'Compute 12+3+5+9+7.' in text  # the toy pair's prompt format
