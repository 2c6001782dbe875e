"""Configuration as objects: the processor and the wrapper take an `ExtrapolationConfig`, and the CLI and lm-eval
options are generated from its fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

import hf_extrapolate.commands as commands
import hf_extrapolate.configuration as configuration
from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM, ExtrapolationConfig
from hf_extrapolate.configuration import SAMPLING_FIELDS

# a selective config that sets every field away from its default, so that a dropped field changes the outputs
CONFIG = ExtrapolationConfig(
    gamma=0.8, weights=(-0.6, 1.7), select="kl", threshold=0.02, temperature=0.9, top_p=0.8, proposer="rl"
)
FULL = ExtrapolationConfig(gamma=0.8, weights=(-0.6, 1.7), temperature=0.7, top_p=0.9, candidate_top_k=7)


def sample(rl, proc, tokenizer, seed=0):
    enc = tokenizer(["12+3=", "1+1="], return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    out = rl.generate(
        **proc.generate_kwargs(rl, **enc, do_sample=True, max_new_tokens=12, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("config", [CONFIG, FULL], ids=["selective", "full-top-k"])
def test_processor_from_config_equals_keyword_form(pair, tokenizer, config):
    rl, base = pair
    from_config = DeltaLogpExtrapolation(base, config, tokenizer=tokenizer)
    from_keywords = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **config.to_dict())
    assert from_config.config == from_keywords.config == config
    seq, scores = sample(rl, from_config, tokenizer)
    seq_kw, scores_kw = sample(rl, from_keywords, tokenizer)
    assert torch.equal(seq, seq_kw) and torch.equal(scores, scores_kw)
    assert from_config.resample_rate == from_keywords.resample_rate
    # not vacuous: the default settings (the RL model) give other scores
    assert not torch.equal(scores, sample(rl, DeltaLogpExtrapolation(base, tokenizer=tokenizer), tokenizer)[1])


@pytest.mark.parametrize("config", [CONFIG, FULL], ids=["selective", "full-top-k"])
def test_wrapper_from_config_equals_keyword_form(pair, tokenizer, config):
    rl, base = pair
    from_config = ExtrapolatedForCausalLM(rl, base, config, tokenizer=tokenizer)
    from_keywords = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **config.to_dict())
    assert from_config.extrapolation == from_keywords.extrapolation == config
    assert from_config.config.extrapolation == config.to_dict()
    enc = tokenizer(["12+3=", "1+1="], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = from_config(**enc).logits
        assert torch.equal(logits, from_keywords(**enc).logits)
        assert not torch.equal(logits, ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer)(**enc).logits)


def test_positional_gamma_still_works(pair):
    rl, base = pair
    assert DeltaLogpExtrapolation(base, 0.5).config == ExtrapolationConfig(gamma=0.5)
    assert ExtrapolatedForCausalLM(rl, base, 0.5, select="kl", threshold=0.1).extrapolation == ExtrapolationConfig(
        gamma=0.5, select="kl", threshold=0.1
    )


@pytest.mark.parametrize("build", ["processor", "wrapper"])
def test_config_and_keywords_together_refused(pair, build):
    rl, base = pair
    make = (lambda *a, **k: DeltaLogpExtrapolation(base, *a, **k)) if build == "processor" else (
        lambda *a, **k: ExtrapolatedForCausalLM(rl, base, *a, **k)
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"not both \(got gamma too\)"):
        make(CONFIG, gamma=0.1)
    with pytest.raises(ValueError, match="gamma given twice"):
        make(0.5, gamma=0.1)
    with pytest.raises(ValueError, match=r"unknown extrapolation setting\(s\) \['gama'\]"):
        make(gama=0.1)


def extrapolation_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    (group,) = [g for g in parser._action_groups if g.title == "extrapolation"]
    return {a.dest: a for a in group._group_actions}


def test_cli_options_are_the_config_fields():
    parser = argparse.ArgumentParser()
    commands.add_pair_arguments(parser)
    options = extrapolation_options(parser)
    names = [f.name for f in dataclasses.fields(ExtrapolationConfig)]
    assert list(options) == [n for n in names if n not in SAMPLING_FIELDS]
    for f in dataclasses.fields(ExtrapolationConfig):
        if f.name in options:
            assert options[f.name].help == f.metadata["help"] and options[f.name].default == f.default
    assert commands.settings_from_args(parser.parse_args([])) == ExtrapolationConfig()
    argv = ["--gamma", "0.8", "--weights", "-0.6", "1.7", "--select", "kl", "--threshold", "0.02"]
    argv += ["--proposer", "rl", "--candidate-top-k", "7"]
    got = commands.settings_from_args(parser.parse_args(argv), temperature=0.9, top_p=0.8)
    assert got == dataclasses.replace(CONFIG, candidate_top_k=7)
    with pytest.raises(SystemExit):  # choices come from the Literal annotations
        parser.parse_args(["--select", "klx"])


@pytest.mark.parametrize("command", ["generate", "export"])
def test_sampling_options_stay_the_commands_own(command):
    parsers = argparse.ArgumentParser().add_subparsers()
    getattr(commands, f"register_{command}")(parsers)
    sub = parsers.choices[command]
    assert not set(SAMPLING_FIELDS) & set(extrapolation_options(sub))
    assert {"temperature", "top_p"} <= {a.dest for a in sub._actions}


def test_adding_a_field_adds_the_option(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Extended(ExtrapolationConfig):
        draft_top_k: int | None = dataclasses.field(default=None, metadata={"help": "a knob added later"})
        mode: tuple[float, float, float] | None = dataclasses.field(
            default=None, metadata={"help": "three numbers", "metavar": ("A", "B", "C")}
        )

    monkeypatch.setattr(configuration, "ExtrapolationConfig", Extended)
    monkeypatch.setattr(commands, "ExtrapolationConfig", Extended)
    parser = argparse.ArgumentParser()
    commands.add_pair_arguments(parser)
    assert {"draft_top_k", "mode"} <= set(extrapolation_options(parser))
    args = parser.parse_args(["--draft-top-k", "3", "--mode", "1", "2", "3", "--gamma", "0.5"])
    assert commands.settings_from_args(args) == Extended(gamma=0.5, draft_top_k=3, mode=(1.0, 2.0, 3.0))


def test_lm_eval_arguments_are_the_config_fields():
    lm_eval_model = pytest.importorskip("hf_extrapolate.evaluation.lm_eval_model")
    names = [f.name for f in dataclasses.fields(ExtrapolationConfig)]
    assert tuple(n for n in names if n not in SAMPLING_FIELDS) == lm_eval_model.EXTRAPOLATION_ARGS
