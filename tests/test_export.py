"""`hf-extrapolate export` never writes over a model it exports, replaces ``--out`` only with ``--overwrite``, and
writes the folder whole (a temporary sibling renamed into place)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import folder_digest, save_pair
from transformers import AutoModelForCausalLM

from hf_extrapolate import ExtrapolatedForCausalLM
from hf_extrapolate.cli import main

IDS = torch.tensor([[1, 5, 9, 14, 3, 7]])


@pytest.fixture(scope="module")
def models(pair, tokenizer, tmp_path_factory):
    """Its own copy of the tiny pair as folders (a broken refusal must not damage the shared ``pair_dir``)."""
    return save_pair(pair, tokenizer, tmp_path_factory.mktemp("export_models"))


def export(models, out, *extra: str) -> int:
    return main(["export", "--rl", str(models / "rl"), "--base", str(models / "base"), "--gamma", "0.5",
                 "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize(
    ("out", "relation"), [("rl", "is"), ("rl/../rl", "is"), ("rl/sub", "lies inside"), (".", "contains")]
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_into_a_models_folder_is_refused(models, capsys, out, relation, overwrite):
    before = folder_digest(models)
    assert export(models, models / out, *(["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{relation} the RL model's folder" in err and "choose another" in err
    assert folder_digest(models) == before
    assert sorted(p.name for p in models.iterdir()) == ["base", "rl"]


def test_a_folder_with_files_is_replaced_only_with_overwrite(models, pair, tokenizer, tmp_path, capsys):
    out = tmp_path / "x05"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    before = folder_digest(out)
    assert export(models, out) == 2
    assert "already holds files" in capsys.readouterr().err and folder_digest(out) == before
    assert export(models, out, "--overwrite") == 0
    assert not (out / "mine.txt").exists() and (out / "README.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x05"]  # no temporary sibling left behind
    config = json.loads((out / "config.json").read_text())
    assert config["rl_model_name_or_path"] == str((models / "rl").resolve())  # local: this machine's path
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, ExtrapolatedForCausalLM(*pair, gamma=0.5)(IDS).logits)


def test_embedded_export_is_self_contained_and_its_card_names_the_folder(models, pair, tmp_path):
    out = tmp_path / "embedded"
    assert export(models, out, "--embed-models") == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["rl_model_name_or_path"], config["base_model_name_or_path"]) == ("./rl", "./base")
    assert 'from_pretrained("embedded", trust_remote_code=True' in (out / "README.md").read_text()
    moved = tmp_path / "moved"
    out.rename(moved)
    loaded = AutoModelForCausalLM.from_pretrained(moved, trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, ExtrapolatedForCausalLM(*pair, gamma=0.5)(IDS).logits)


def test_a_failed_export_leaves_nothing(models, tmp_path, capsys):
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text((models / "base" / "config.json").read_text())
    code = main(["export", "--rl", str(models / "rl"), "--base", str(tmp_path / "no-tokenizer"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "no tokenizer found for the base model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-tokenizer"]


def test_an_exported_folder_has_a_neutral_generation_config(pair, tokenizer, tmp_path):
    """A member's sampling and penalty defaults (Qwen's) are not the pair's: the folder keeps its special tokens."""
    save_pair(pair, tokenizer, tmp_path)
    rl = pair[0]
    qwen = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    written = json.loads((tmp_path / "rl" / "generation_config.json").read_text())
    (tmp_path / "rl" / "generation_config.json").write_text(json.dumps({**written, **qwen}))
    assert export(tmp_path, tmp_path / "x05") == 0
    saved = json.loads((tmp_path / "x05" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == rl.generation_config.eos_token_id
    assert saved.get("temperature", 1.0) == 1.0 and saved.get("top_p", 1.0) == 1.0
    assert all(saved.get(k) in (None, 0, 1.0) for k in ("top_k", "repetition_penalty")), saved
