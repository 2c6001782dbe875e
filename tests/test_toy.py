"""The toy task (determinism, disjoint splits, grading) and the toy pair's training pipeline."""

from __future__ import annotations

import random
import re

import pytest
from conftest import tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_extrapolate.cli import main
from hf_extrapolate.evaluation.grading import avg_at_k, is_correct
from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import format_prompt, make_problems, noisy_solution
from hf_extrapolate.toy.train import BASE_FIELDS, ToySettings, cache_dir, exact_match_reward, pair_paths, toy_tokenizer

TRAINED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # as trained


def test_problems_are_deterministic():
    assert make_problems("train", 50, seed=3) == make_problems("train", 50, seed=3)
    assert make_problems("train", 50, seed=3) != make_problems("train", 50, seed=4)
    assert make_problems("test", 20, seed=0) == make_problems("test", 40, seed=0)[:20]


def test_splits_are_disjoint():
    train = {p["problem"] for s in (0, 1) for p in make_problems("train", 3000, seed=s)}
    test = {p["problem"] for s in (0, 1) for p in make_problems("test", 1000, seed=s)}
    assert len(test) > 1900 and not train & test


def test_solutions_are_correct_worked_steps():
    for p in make_problems("test", 200):
        *steps, boxed = p["solution"].split("\n")
        assert boxed == f"\\boxed{{{p['answer']}}}" and is_correct(p["solution"], p["answer"])
        value = p["terms"][0]
        for step, term in zip(steps, p["terms"][1:], strict=True):
            value += term
            assert re.fullmatch(rf"\d+{re.escape(f'{term:+d}')}={value}", step)
        assert str(value) == p["answer"]
        assert p["problem"].startswith("Compute ") and p["problem"].endswith(".")


def test_noisy_solutions_slip_at_the_given_rate():
    problems = make_problems("train", 400)
    rng = random.Random(0)
    assert all(noisy_solution(p["terms"])[0] == p["solution"] for p in problems)
    wrong = [noisy_solution(p["terms"], slip_rate=0.2, rng=rng)[1] != int(p["answer"]) for p in problems]
    assert 0.4 < sum(wrong) / len(wrong) < 0.85  # 1 - 0.8**k for k in 3..6 steps is 0.49..0.74
    for p in problems:  # the blind spot: adding 9 written as adding 8, nothing else
        solution, value = noisy_solution(p["terms"], nine_rate=1.0, rng=rng)
        assert value == int(p["answer"]) - (9 in p["terms"][1:])
        assert ("+9=" in solution) == (9 in p["terms"][1:])
    with pytest.raises(ValueError, match="rng"):
        noisy_solution(problems[0]["terms"], 0.5)


def test_make_problems_rejects_bad_input():
    with pytest.raises(ValueError, match="split"):
        make_problems("validation", 3)
    with pytest.raises(ValueError, match="n must"):
        make_problems("train", -1)


@pytest.mark.parametrize("make_tokenizer", ["fixture", "toy"])
def test_format_prompt_is_byte_identical_to_the_trained_prompt(tokenizer, make_tokenizer):
    """The toy pair was trained on the chat template around `problem + "\\n" + instruction` (the literal here)."""
    tok = tokenizer if make_tokenizer == "fixture" else toy_tokenizer()
    for p in [*make_problems("test", 20), {"problem": "Compute 1+2+3."}]:
        trained = f"<|im_start|>user\n{p['problem']}\n{TRAINED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
        assert format_prompt(p["problem"], tok) == trained
    if make_tokenizer == "toy":  # the instruction is still one token of the toy vocabulary
        assert len(tok(TRAINED_INSTRUCTION, add_special_tokens=False).input_ids) == 1


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("12+3=15\n\\boxed{15}", "15", True),
        ("\\boxed{15}", "16", False),
        ("\\boxed{14} then \\boxed{15}", "15", True),  # the last box counts
        ("\\boxed{15} then \\boxed{14}", "15", False),
        ("\\boxed{ 015 }", "15", True),
        ("\\boxed{15", "15", False),  # unclosed
        ("15", "15", False),  # no box
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True),  # nested braces
        ("\\boxed{}", "0", False),
        ("\\boxed{15.0}", "15", False),  # exact match: math-verify would accept it
        ("\\boxed{15} \\fbox{14}", "15", True),  # \\fbox is not read: math-verify would grade 14
        ("\\boxed{\\{15}", "\\{15", False),  # no escapes: the box closes at the first `}`
    ],
)
def test_exact_match_reward_is_the_frozen_training_rule(completion, answer, expected):
    assert exact_match_reward(completion, answer) is expected


def test_settings_keys_share_the_base():
    plain, reweighted = ToySettings(), ToySettings(reweight="direction", reweight_c=0.2)
    assert plain.key(BASE_FIELDS) == reweighted.key(BASE_FIELDS) and plain.key() != reweighted.key()
    assert ToySettings(seed=1).key(BASE_FIELDS) != plain.key(BASE_FIELDS)
    with pytest.raises(ValueError, match="reweight"):
        ToySettings(reweight="sideways")


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_EXTRAPOLATE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("HF_EXTRAPOLATE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "hf_extrapolate"


TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "sft_problems": 64, "grpo_steps": 1, "grpo_prompts": 2}


def _check_pair(rl, base):
    for d in (rl, base):
        model = AutoModelForCausalLM.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size
        assert tok.convert_ids_to_tokens(model.generation_config.eos_token_id) == ["<|im_end|>", "<|endoftext|>"]
        assert model.generation_config.pad_token_id == tok.pad_token_id and tok.eos_token == "<|im_end|>"


def test_pair_paths_trains_once_then_reuses(tmp_path):
    """The whole pipeline at a tiny size: SFT, one GRPO step with reweighting, saved folders, cache reuse."""
    rl, base = pair_paths(seed=0, root=tmp_path, reweight="direction", **TINY)
    _check_pair(rl, base)
    stamp = (rl / "model.safetensors").stat().st_mtime_ns
    assert pair_paths(seed=0, root=tmp_path, reweight="direction", **TINY) == (rl, base)
    assert (rl / "model.safetensors").stat().st_mtime_ns == stamp
    rl2, base2 = pair_paths(seed=0, root=tmp_path, **TINY)  # plain GRPO reuses the same base model
    assert base2 == base and rl2 != rl
    folders = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # the locks stay
    assert folders == sorted([rl.name, rl2.name, base.name])
    again, _ = pair_paths(seed=0, root=tmp_path / "again", reweight="direction", **TINY)  # deterministic
    assert (again / "model.safetensors").read_bytes() == (rl / "model.safetensors").read_bytes()


def test_train_toy_rejects_bad_input(tmp_path, capsys):
    assert main(["train-toy", "--reweight-c", "3"]) == 2
    assert "--reweight-c must be in [0, 1]" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train-toy", "--out", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err


@pytest.mark.slow
def test_train_toy_full_pair(tmp_path, capsys):
    """The default pair (trained once into the user cache, reused after): RL clearly beats base when sampling."""
    assert main(["train-toy", "--out", str(tmp_path / "pair")]) == 0
    assert "RL model:" in capsys.readouterr().out
    rl, base = tmp_path / "pair" / "rl", tmp_path / "pair" / "base"
    _check_pair(rl, base)
    problems = make_problems("test", 100)
    acc = {}
    for name, d in (("rl", rl), ("base", base)):
        model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
        acc[name] = sum(avg_at_k(generate(model, tok, problems, k=4), [p["answer"] for p in problems])) / len(problems)
    assert acc["rl"] - acc["base"] > 0.15 and acc["rl"] < 1.0, acc


def test_generate_shapes_and_grading(tokenizer):
    problems = make_problems("test", 3)
    out = generate(tiny_model(), tokenizer, problems, k=2, batch_size=2)
    assert [len(cs) for cs in out] == [2, 2, 2] and all(isinstance(c, str) for cs in out for c in cs)
    perfect = [[p["solution"]] for p in problems]
    assert avg_at_k(perfect, [p["answer"] for p in problems]) == [1.0, 1.0, 1.0]
