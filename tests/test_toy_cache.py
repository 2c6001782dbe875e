"""The toy pair's cache: sha256 checked on reuse, one process trains while another waits, temporaries of killed
runs removed, SIGTERM/Ctrl-C cleaned up, and one line before any training says what, how long and where."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import default_sigint
from filelock import FileLock
from safetensors.torch import save_file
from test_toy import TINY

from hf_extrapolate.cli import main
from hf_extrapolate.toy.train import (
    QUIET_RATE,
    SETTINGS_FILE,
    ToySettings,
    _digests,
    check_cached,
    pair_paths,
    training_notice,
)

SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
NOTICE = "hf-extrapolate: no cached toy pair for these settings"


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> Path:
    """A cache folder holding the TINY pair (seed 0), trained once for this module."""
    root = tmp_path_factory.mktemp("cache")
    pair_paths(seed=0, root=root, **TINY)
    return root


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name)


def train_toy(root: Path, *extra: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hf_extrapolate.cli", "train-toy", "--cache-dir", str(root), *SETS, *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **kwargs
    )


def model_folder(folder: Path, info: dict | None = None) -> Path:
    """A folder shaped like a cached model: weights, config, and toy_settings.json recording their sha256."""
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(6.0)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    info = {"settings": {}, "sha256": _digests(folder)} if info is None else info
    (folder / SETTINGS_FILE).write_text(json.dumps(info))
    return folder


def test_check_cached_finds_each_kind_of_damage(tmp_path):
    assert check_cached(model_folder(tmp_path / "ok")) is None
    assert check_cached(tmp_path / "absent") == "not cached"
    flipped = model_folder(tmp_path / "flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (flipped / "model.safetensors").write_bytes(bytes(data))
    assert check_cached(flipped) == "model.safetensors does not match the recorded sha256"
    gone = model_folder(tmp_path / "gone")
    (gone / "config.json").unlink()
    assert "config.json does not match" in check_cached(gone)
    (gone / SETTINGS_FILE).write_text("{not json")
    assert SETTINGS_FILE in check_cached(gone)
    # a folder cached before sha256 was recorded: reused if its weights load, not if they are cut short
    legacy = model_folder(tmp_path / "legacy", info={"settings": {}})
    assert check_cached(legacy) is None
    (legacy / "model.safetensors").write_bytes((legacy / "model.safetensors").read_bytes()[:-8])
    assert "model.safetensors cannot be read" in check_cached(legacy)


def test_cached_pair_records_the_sha256_of_every_file(cached):
    for folder in (p for p in cached.iterdir() if p.is_dir()):  # both models
        recorded = json.loads((folder / SETTINGS_FILE).read_text())["sha256"]
        assert recorded == _digests(folder) and "model.safetensors" in recorded and "tokenizer.json" in recorded


def test_a_corrupt_cached_model_is_trained_again(cached, tmp_path, capfd):
    root = tmp_path / "cache"
    shutil.copytree(cached, root)
    rl, base = pair_paths(seed=0, root=root, **TINY)
    good = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(good[: len(good) // 2])  # a disk that filled up, say
    capfd.readouterr()
    assert pair_paths(seed=0, root=root, **TINY) == (rl, base)
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hf-extrapolate:")]
    assert len(err) == 2 and f"the cached {base} is damaged (model.safetensors does not match" in err[0]
    assert err[1].startswith(NOTICE) and "(SFT of the base model)" in err[1] and str(root) in err[1]
    assert (base / "model.safetensors").read_bytes() == good  # the training is deterministic
    assert check_cached(base) is None and leftovers(root) == []


def test_temporaries_of_a_killed_run_are_removed_on_reuse(cached, tmp_path, capfd):
    root = tmp_path / "cache"
    shutil.copytree(cached, root)
    rl, base = pair_paths(seed=0, root=root, **TINY)
    for folder in (rl, base):  # what a SIGKILL during training leaves: nobody holds the lock any more
        (root / f"{folder.name}.tmp-x1y2").mkdir()
        (root / f"{folder.name}.tmp-x1y2" / "model.safetensors").write_bytes(b"half")
    capfd.readouterr()
    assert pair_paths(seed=0, root=root, **TINY) == (rl, base)
    assert leftovers(root) == [] and "hf-extrapolate:" not in capfd.readouterr().err  # reused: nothing said


@pytest.mark.slow
def test_a_second_process_waits_for_the_lock_then_reuses(cached, tmp_path):
    """The test plays a process training the base model: it holds the lock and renames the finished folder into
    place. `train-toy` says it waits, and once the lock is free reuses that folder without training anything
    (slow: a fresh Python process)."""
    root = tmp_path / "cache"
    shutil.copytree(cached, root)
    rl, base = pair_paths(seed=0, root=root, **TINY)
    stamps = {p: (p / "model.safetensors").stat().st_mtime_ns for p in (rl, base)}
    with FileLock(root / f".{base.name}.lock"):
        base.rename(root / f"{base.name}.tmp-training")
        proc = train_toy(root)
        waiting = next((line for line in proc.stderr if "waiting" in line), "")  # printed before it blocks
        assert waiting.strip() == f"hf-extrapolate: another process is training {base}; waiting for it"
        (root / f"{base.name}.tmp-training").rename(base)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"RL model:   {rl}" in out and NOTICE not in err
    assert {p: (p / "model.safetensors").stat().st_mtime_ns for p in (rl, base)} == stamps


@pytest.mark.slow
def test_two_concurrent_runs_train_the_pair_once(tmp_path):
    root = tmp_path / "cache"
    procs = [train_toy(root) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    named = [[line for line in out.splitlines() if line.startswith(("base model:", "RL model:"))] for out, _ in results]
    assert len(named[0]) == 2 and named[0] == named[1]  # both name the same folders
    text = "".join(out + err for out, err in results)
    assert text.count("'train_runtime'") == 2  # one SFT and one GRPO in all, whichever process ran them
    models = sorted(p for p in root.iterdir() if not p.name.endswith(".lock"))
    assert [p.name.split("-")[1] for p in models] == ["base", "rl"]
    assert all(check_cached(p) is None for p in models)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130,
                                                                                           "interrupted")])  # fmt: skip
def test_a_signal_during_training_cleans_up_and_a_rerun_recovers(tmp_path, signum, code, word):
    root = tmp_path / "cache"
    proc = train_toy(root, "--set", "sft_problems=640")  # long enough (10 SFT steps) to be caught training
    deadline = time.monotonic() + 300
    while not (root.is_dir() and leftovers(root)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert leftovers(root), "the training never started"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert err.strip().splitlines()[-1] == f"hf-extrapolate train-toy: {word}; results already written are kept"
    assert "Traceback" not in err and leftovers(root) == []
    assert not any(check_cached(p) is None for p in root.glob("toy-rl-*"))  # no RL model claimed
    again = train_toy(root, "--set", "sft_problems=640")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    named = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("base model:", "RL model:")))
    assert all(check_cached(Path(folder.strip())) is None for folder in named.values()) and len(named) == 2
    assert leftovers(root) == []


def test_training_needs_the_train_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed
    assert main(["train-toy", "--cache-dir", str(tmp_path), *SETS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "hf-extrapolate train-toy: error: training the toy pair needs trl, which is not installed: "
        'pip install "hf-extrapolate[train]"'
    ]
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_reusing_a_cached_pair_does_not_need_trl(cached, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)
    rl, base = pair_paths(seed=0, root=cached, **TINY)
    assert check_cached(rl) is None and check_cached(base) is None


def test_training_notice_estimates_from_the_quiet_machine_and_past_runs(tmp_path):
    default = ToySettings()
    line = training_notice(default, ["base", "rl"], tmp_path)
    assert line == (f"{NOTICE} (seed 0): training it (SFT of the base model, then GRPO), ~9 min on a quiet "
                    f"2-core machine; cached in {tmp_path}")  # fmt: skip
    # twice the SFT problems and a model of twice the width (4× the work per token): 8 × the quiet SFT time
    bigger = dataclasses.replace(default, sft_problems=2 * default.sft_problems, hidden_size=2 * default.hidden_size)
    quiet_sft = QUIET_RATE["base"] * default.sft_problems
    assert f", ~{8 * quiet_sft / 60:.0f} min on a quiet" in training_notice(bigger, ["base"], tmp_path)
    # past runs here: an SFT of 20000 problems took 300 s and 100 GRPO steps 200 s, both at the default size
    for stage, seconds, fields in (("base", 300, {"sft_problems": 20000}), ("rl", 200, {"grpo_steps": 100})):
        run = tmp_path / f"toy-{stage}-0123456789ab"
        run.mkdir()
        info = {"settings": {**dataclasses.asdict(default), **fields}, "train_seconds": seconds}
        (run / SETTINGS_FILE).write_text(json.dumps(info))
    expected = 300 * default.sft_problems / 20000 + 200 * default.grpo_steps / 100
    line = training_notice(default, ["base", "rl"], tmp_path)
    assert f"; ~{expected / 60:.0f} min judging by the runs cached here;" in line
    assert "(GRPO from the cached base model)" in training_notice(default, ["rl"], tmp_path)
    assert len(line.splitlines()) == 1


def test_bad_settings_are_one_line(tmp_path, capsys):
    for bad, message in (("grpo_steps=0", "grpo_steps must be positive"), ("slip_rate=2", "must be in [0, 1]")):
        assert main(["train-toy", "--cache-dir", str(tmp_path), "--set", bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train-toy", "--set", "hidden=8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hf-extrapolate train-toy") and "FIELD one of seed" not in err
    assert os.listdir(tmp_path) == []


def test_first_training_says_what_it_does_and_prints_no_avoidable_warning(tmp_path):
    """`train-toy` on an empty cache, in a fresh process: its first line says what is trained, how long it takes and
    where it is cached; each stage has a named bar; no third-party warning that the project causes (transformers'
    checkpointing deprecations, TRL's bitsandbytes import, datasets' per-map bars) reaches the terminal."""
    env = {**os.environ, "HF_EXTRAPOLATE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hf_extrapolate.cli", "train-toy", *SETS], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0].startswith("hf-extrapolate: no cached toy pair for these settings (seed 0): training it (SFT")
    assert "on a quiet 2-core machine; cached in " + str(tmp_path / "cache") in lines[0]
    assert any(line.startswith("toy base model: SFT:") for line in lines)
    assert any(line.startswith("toy RL model: GRPO:") for line in lines)
    noise = [line for line in lines if re.search(r"Warning|warnings\.warn|Failed to load|dataset:", line)]
    assert not noise, noise
