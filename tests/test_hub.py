"""Saving and loading pairs through a real, offline Hugging Face cache: hub ids, revisions, subfolders, embedded
pairs laid into the cache as repositories, pushing (only the HfApi network calls are replaced), and bad folders."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import folder_digest, perturbed
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM

from hf_extrapolate import ExtrapolatedForCausalLM, load_pair
from hf_extrapolate.configuration import ExtrapolationConfig
from hf_extrapolate.pair_folder import Member, locate, write_pair_folder

IDS = torch.tensor([[1, 5, 9, 14, 3, 7], [1, 22, 4, 8, 30, 2]])


def add_to_cache(hub: Path, repo_id: str, folder: Path, ref: str = "main") -> str:
    """Lay ``folder`` into the cache ``hub`` as huggingface_hub lays out a download: ``blobs/<sha256>``,
    ``snapshots/<commit>/`` of relative symlinks into the blobs, ``refs/<ref>`` holding the 40-hex commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    commit = hashlib.sha1("".join(f"{f.relative_to(folder)}{d}" for f, d in digests.items()).encode()).hexdigest()
    for file, digest in digests.items():
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(file.read_bytes())
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture(scope="session")
def hub(pair, tokenizer, tmp_path_factory) -> dict:
    """An HF_HOME with ``hfx/rl`` (main, and a ref ``other`` holding different weights), ``hfx/base``, and
    ``hfx/pair``: an embedded γ = 0.5 pair at the root and one built on the ``other`` RL model in ``sel/``."""
    home = tmp_path_factory.mktemp("hf_home")
    cache, work = home / "hub", tmp_path_factory.mktemp("repos")
    rl, base = pair
    other = perturbed(base, seed=5)
    commits = {}
    for repo, ref, model in (("rl", "main", rl), ("rl", "other", other), ("base", "main", base)):
        model.save_pretrained(work / repo / ref)
        tokenizer.save_pretrained(work / repo / ref)
        commits[repo, ref] = add_to_cache(cache, f"hfx/{repo}", work / repo / ref, ref)
    for sub, rl_model in (("", rl), ("sel", other)):
        wrapper = ExtrapolatedForCausalLM(rl_model, base, gamma=0.5, tokenizer=tokenizer)
        wrapper.generation_config = copy.deepcopy(wrapper.generation_config)
        wrapper.generation_config.max_new_tokens = 7 if sub else 5
        wrapper.save_pretrained(work / "pair" / sub)
    commits["pair", "main"] = add_to_cache(cache, "hfx/pair", work / "pair")
    return {"home": home, "cache": cache, "commits": commits, "rl": rl, "other": other, "base": base}


def reference(rl, base, gamma: float = 0.5) -> torch.Tensor:
    """Log-probs of the in-memory models the cache was built from: what every load must reproduce."""
    with torch.no_grad():
        return ExtrapolatedForCausalLM(rl, base, gamma=gamma)(IDS).logits


def logprobs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def offline(hub: dict) -> dict:
    return {"cache_dir": str(hub["cache"]), "local_files_only": True}


def test_fake_cache_resolves_like_a_download(hub):
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    assert Path(try_to_load_from_cache("hfx/rl", "config.json", cache_dir=hub["cache"])).is_file()
    other = snapshot_download("hfx/rl", revision="other", cache_dir=hub["cache"], local_files_only=True)
    assert Path(other).name == hub["commits"]["rl", "other"]


@pytest.fixture(scope="module")
def named_pair(hub, tmp_path_factory) -> Path:
    """A pair loaded by hub ids from the cache (checked against the in-memory models), saved: names only."""
    rl, base, tok = load_pair("hfx/rl", "hfx/base", **offline(hub))
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok)
    assert torch.equal(logprobs(wrapper), reference(hub["rl"], hub["base"]))
    out = tmp_path_factory.mktemp("named") / "x05"
    wrapper.save_pretrained(out)
    return out


def test_hub_ids_are_recorded_without_local_paths(hub, named_pair):
    config = json.loads((named_pair / "config.json").read_text())
    assert (config["rl_model_name_or_path"], config["base_model_name_or_path"]) == ("hfx/rl", "hfx/base")
    assert not list(named_pair.rglob("*.safetensors"))  # named, not embedded
    text = "\n".join(p.read_text() for p in named_pair.rglob("*") if p.suffix in (".json", ".md", ".py"))
    leaks = [line for line in text.splitlines() if str(named_pair.parent) in line or str(hub["home"]) in line]
    assert not leaks
    loaded = ExtrapolatedForCausalLM.from_pretrained(named_pair, **offline(hub))
    assert torch.equal(logprobs(loaded), reference(hub["rl"], hub["base"]))


@pytest.mark.slow
def test_hub_ids_round_trip_in_a_fresh_process(hub, named_pair, tmp_path):
    """A new interpreter with only HF_HOME and HF_HUB_OFFLINE=1 loads the saved folder to the same log-probs."""
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True); "
        f"torch.save(m(torch.tensor({IDS.tolist()})).logits.detach(), sys.argv[2])"
    )
    env = {**os.environ, "HF_HOME": str(hub["home"]), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", script, str(named_pair), str(tmp_path / "lp.pt")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "lp.pt"), reference(hub["rl"], hub["base"]))


def test_member_revision_is_recorded_and_honoured(hub, tmp_path):
    rl, base, tok = load_pair("hfx/rl", "hfx/base", revision="other", **offline(hub))
    expected = reference(hub["other"], hub["base"])
    assert not torch.allclose(expected, reference(hub["rl"], hub["base"]), atol=1e-3)  # the revisions differ
    ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok).save_pretrained(tmp_path / "x")
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert (config["rl_model_revision"], config["base_model_revision"]) == ("other", None)
    loaded = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "x", **offline(hub))
    assert torch.equal(logprobs(loaded), expected)


def test_a_cache_snapshot_folder_is_recorded_as_its_hub_id_and_commit(hub, tmp_path):
    commit = hub["commits"]["rl", "other"]
    snapshot = hub["cache"] / "models--hfx--rl" / "snapshots" / commit
    assert locate(str(snapshot)) == Member("hfx/rl", commit, None)
    assert locate(str(snapshot / "..")) == Member(str((snapshot / "..").resolve()))  # not inside a snapshot
    rl, base, tok = load_pair(str(snapshot), "hfx/base", **offline(hub))
    ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok).save_pretrained(tmp_path / "x")
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert (config["rl_model_name_or_path"], config["rl_model_revision"]) == ("hfx/rl", commit)
    loaded = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "x", **offline(hub))
    assert torch.equal(logprobs(loaded), reference(hub["other"], hub["base"]))


def test_embedded_pair_on_the_hub_loads_with_revision_and_subfolder(hub, tmp_path):
    kw = dict(trust_remote_code=True, **offline(hub))
    root = AutoModelForCausalLM.from_pretrained("hfx/pair", **kw)
    assert type(root) is ExtrapolatedForCausalLM and root.extrapolation.gamma == 0.5
    assert torch.equal(logprobs(root), reference(hub["rl"], hub["base"]))
    assert root.generation_config.max_new_tokens == 5  # the folder's own generation config
    commit = hub["commits"]["pair", "main"]
    sel = AutoModelForCausalLM.from_pretrained("hfx/pair", subfolder="sel", revision=commit, **kw)
    assert torch.equal(logprobs(sel), reference(hub["other"], hub["base"]))
    assert sel.generation_config.max_new_tokens == 7
    # saved again: the models are named where they live in the pair's repository, nothing is copied
    sel.save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    where = [config[f"rl_model_{key}"] for key in ("name_or_path", "revision", "subfolder")]
    assert where == ["hfx/pair", commit, "sel/rl"]
    assert not list((tmp_path / "again").rglob("*.safetensors"))
    again = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "again", gamma=1.0, **offline(hub))
    assert torch.equal(logprobs(again), reference(hub["other"], hub["base"], gamma=1.0))


def test_models_without_a_tokenizer_are_refused_at_save(pair, tmp_path):
    wrapper = ExtrapolatedForCausalLM(*pair, gamma=0.5)
    with pytest.raises(ValueError, match=r"without a tokenizer.*tokenizer=tok"):
        wrapper.save_pretrained(tmp_path / "x")
    with pytest.raises(ValueError, match=r"built in memory.*embed_models=True"):
        wrapper.save_pretrained(tmp_path / "x", embed_models=False)
    assert not (tmp_path / "x").exists()


def test_folder_naming_itself_or_unknown_settings_fail_before_any_weights(hub, pair_dir, tmp_path):
    """The other model is a folder without weights: an error about the settings or the member comes first."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((pair_dir / "base" / "config.json").read_text())
    cases = {
        "dot": ({"rl_model_name_or_path": "."}, "is this pair folder itself"),
        "abs": ({"rl_model_name_or_path": str(tmp_path / "abs")}, "is this pair folder itself"),
        "key": (
            {"extrapolation": {"gamma": 0.5, "gama": 1.0}},
            r"unknown extrapolation setting\(s\) \['gama'\]; known",
        ),
    }
    for name, (edit, message) in cases.items():
        write_pair_folder(tmp_path / name, "hfx/rl", str(empty), ExtrapolationConfig(gamma=0.5))
        config = json.loads((tmp_path / name / "config.json").read_text())
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(ValueError, match=message) as err:
            AutoModelForCausalLM.from_pretrained(tmp_path / name, trust_remote_code=True, **offline(hub))
        assert len(str(err.value).splitlines()) == 1


def test_push_uploads_a_folder_that_names_hub_ids(hub, pair_dir, monkeypatch):
    """Only HfApi's network calls are replaced; the uploaded folder is read while it exists."""
    seen = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        seen["files"] = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*")
                         if p.is_file()}  # fmt: skip
        seen["repo_id"], seen["kwargs"] = repo_id, kwargs
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, *, branch, **kw: seen.update(branch=branch))
    rl, base, tok = load_pair("hfx/rl", "hfx/base", **offline(hub))
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok)
    assert wrapper.push_to_hub("me/x05", commit_message="hi") == "commit-info"
    assert seen["repo_id"] == "me/x05" and seen["kwargs"]["commit_message"] == "hi"
    config = json.loads(seen["files"]["config.json"])
    assert config["rl_model_name_or_path"] == "hfx/rl" and "modeling_hf_extrapolate.py" in seen["files"]
    card = seen["files"]["README.md"].decode()
    assert "hfx/rl" in card and 'from_pretrained("me/x05", trust_remote_code=True' in card
    assert not any(name.endswith(".safetensors") for name in seen["files"])
    wrapper.push_to_hub("me/x05", revision="dev")
    assert seen["branch"] == "dev" and seen["kwargs"]["revision"] == "dev"

    local_rl, local_base, _ = load_pair(str(pair_dir / "rl"), str(pair_dir / "base"))
    local = ExtrapolatedForCausalLM(local_rl, local_base, gamma=0.5, tokenizer=tok)
    seen.clear()
    with pytest.raises(ValueError, match=r"local folder .* Hub cannot reach; pass embed_models=True"):
        local.push_to_hub("me/local")
    assert not seen
    local.push_to_hub("me/local", embed_models=True)
    assert {"rl/model.safetensors", "base/model.safetensors", "rl/tokenizer.json"} <= set(seen["files"])
    assert json.loads(seen["files"]["config.json"])["rl_model_name_or_path"] == "./rl"


def test_trust_remote_code_reaches_the_models(pair_dir, tmp_path):
    """A base model with its own code (``auto_map``) loads inside a pair only with ``trust_remote_code=True``."""
    custom = tmp_path / "custom"
    custom.mkdir()
    for file in (pair_dir / "base").iterdir():
        (custom / file.name).write_bytes(file.read_bytes())
    (custom / "configuration_hfxcustom.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'hfx_custom'\n"
    )
    (custom / "modeling_hfxcustom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_hfxcustom import CustomConfig\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((custom / "config.json").read_text())
    config["model_type"] = "hfx_custom"
    config["auto_map"] = {"AutoConfig": "configuration_hfxcustom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_hfxcustom.CustomForCausalLM"}  # fmt: skip
    (custom / "config.json").write_text(json.dumps(config))
    write_pair_folder(tmp_path / "x", str(pair_dir / "rl"), str(custom), ExtrapolationConfig(gamma=0.5))
    with pytest.raises(ValueError, match="trust_remote_code"):
        ExtrapolatedForCausalLM.from_pretrained(tmp_path / "x")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "x", trust_remote_code=True)
    assert type(loaded.base).__name__ == "CustomForCausalLM" and type(loaded.rl).__name__ == "LlamaForCausalLM"


def test_local_rules_in_place_resave_refusal_and_other_processes(pair, tokenizer, tmp_path):
    """A pair saved again into its own folder keeps its embedded models (named ``./rl``, untouched); saving into a
    model's folder is refused with that folder unchanged; a process other than the main one writes nothing."""
    ExtrapolatedForCausalLM(*pair, gamma=0.5, tokenizer=tokenizer).save_pretrained(tmp_path / "p")
    weights = folder_digest(tmp_path / "p" / "rl")
    loaded = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "p", gamma=2.0)
    loaded.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["rl_model_name_or_path"] == "./rl"
    assert folder_digest(tmp_path / "p" / "rl") == weights
    again = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "p")
    assert again.extrapolation.gamma == 2.0 and torch.equal(logprobs(again), reference(*pair, gamma=2.0))
    for out, relation in ((tmp_path / "p" / "rl", "is"), (tmp_path / "p" / "base" / "x", "lies inside")):
        with pytest.raises(ValueError, match=f"{relation} the (rl|base) model's folder"):
            loaded.save_pretrained(out)
    assert folder_digest(tmp_path / "p" / "rl") == weights and not (tmp_path / "p" / "base" / "x").exists()
    loaded.save_pretrained(tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()


def test_export_of_cache_snapshots_names_hub_ids(hub, tmp_path):
    from hf_extrapolate.cli import main

    snapshot = {repo: hub["cache"] / f"models--hfx--{repo}" / "snapshots" / hub["commits"][repo, ref]
                for repo, ref in (("rl", "other"), ("base", "main"))}  # fmt: skip
    args = ["export", "--rl", str(snapshot["rl"]), "--base", str(snapshot["base"]), "--gamma", "0.5"]
    assert main([*args, "--out", str(tmp_path / "x")]) == 0
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert (config["rl_model_name_or_path"], config["rl_model_revision"]) == ("hfx/rl", hub["commits"]["rl", "other"])
    assert config["base_model_name_or_path"] == "hfx/base" and str(hub["home"]) not in json.dumps(config)
    loaded = ExtrapolatedForCausalLM.from_pretrained(tmp_path / "x", **offline(hub))
    assert torch.equal(logprobs(loaded), reference(hub["other"], hub["base"]))


def test_a_hub_pair_naming_itself_is_refused(hub, tmp_path):
    write_pair_folder(tmp_path / "self", ".", "hfx/base", ExtrapolationConfig(gamma=0.5))
    add_to_cache(hub["cache"], "hfx/self", tmp_path / "self")
    with pytest.raises(ValueError, match=r"hfx/self: the RL model '\.' is this pair folder itself"):
        AutoModelForCausalLM.from_pretrained("hfx/self", trust_remote_code=True, **offline(hub))
