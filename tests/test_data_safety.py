"""Every command that writes a folder (train-toy, analyze, quickstart, bench) keeps a user's folder: refused, at
once, while it holds files; with --overwrite replaced only when the new results are complete (an interruption
while writing leaves it as it was), with no temporaries left beside it."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import pytest
from conftest import folder_digest
from test_toy import TINY

from hf_extrapolate import bench, outputs
from hf_extrapolate.analysis import command as analysis_command
from hf_extrapolate.cli import main
from hf_extrapolate.toy import command as toy_command
from hf_extrapolate.toy import quickstart
from hf_extrapolate.toy.train import pair_paths


@pytest.fixture(scope="module")
def toy_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cache folder, rl, base) of the TINY toy pair, trained once for this module."""
    root = tmp_path_factory.mktemp("cache")
    return root, *pair_paths(seed=0, root=root, **TINY)


@pytest.fixture
def commands(toy_pair, pair_dir, tmp_path, monkeypatch) -> dict[str, tuple[list[str], object, set[str]]]:
    """For each writing command: its arguments (without --out), its module, and the files it writes."""
    root = toy_pair[0]
    # quickstart trains the default pair: make it the TINY one (train-toy passes TINY itself)
    monkeypatch.setattr("hf_extrapolate.toy.train.pair_paths", functools.partial(pair_paths, root=root, **TINY))
    monkeypatch.setattr(bench, "_run_one", lambda case: bench.measure(**case))  # in-process, no worker processes
    # quickstart's decoding (16 runs of generate) is covered elsewhere; here only where its results go matters
    monkeypatch.setattr(quickstart, "evaluate", fake_evaluate)
    data = tmp_path / "problems.jsonl"
    data.write_text('{"problem": "Compute 1+2.", "answer": "3"}\n')
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    pair = ["--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base")]
    return {
        "train-toy": (["train-toy", "--cache-dir", str(root), *sets], toy_command, {"base", "rl"}),
        "analyze": (
            [
                "analyze",
                *pair,
                "--data",
                str(data),
                "--samples",
                "2",
                "--max-new-tokens",
                "4",
                "--shares",
                "0.2",
                "--metrics",
                "delta_logp",
                "--directions",
                "forward",
            ],
            analysis_command,
            {"analysis.json", "tokens.npz", "distributions.png", "replacement.png", "summary.md"},
        ),
        "quickstart": (
            ["quickstart", "--n-problems", "1", "--samples", "2"],
            quickstart,
            {"quickstart.json", "accuracy_vs_gamma.png"},
        ),
        "bench": (
            ["bench", "--model", "tiny", "--lengths", "4/4", "--batches", "1", "--repeats", "1", "--variants", "rl"],
            bench,
            {"bench.md", "bench.json"},
        ),
    }


def fake_evaluate(method: quickstart.Method, *args) -> None:
    method.results = {mode: {"accuracy": 0.5, "ci95": 0.1} for mode in ("sampled", "greedy")}


def user_folder(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.tex").write_text("months of work")
    (out / "data.bin").write_bytes(bytes(range(256)))
    return out


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


COMMANDS = ["train-toy", "analyze", "quickstart", "bench"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_folder_with_files_is_refused_at_once(name, commands, tmp_path, capsys, monkeypatch):
    argv, module, _ = commands[name]
    out = user_folder(tmp_path)
    before = folder_digest(out)
    monkeypatch.setattr(module, "output_folder", lambda *a, **k: pytest.fail("nothing may be written"))
    for long_work in (
        "hf_extrapolate.toy.train.pair_paths",
        "hf_extrapolate.analysis.command.load_from_args",
        "hf_extrapolate.bench.run",
    ):  # refused before any training, loading or measuring
        monkeypatch.setattr(long_work, lambda *a, **k: pytest.fail("refuse before the long work"))
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hf-extrapolate {name}: error: --out {out} already holds files; choose a new folder, or pass "
                   "--overwrite to replace it"]  # fmt: skip
    assert folder_digest(out) == before and siblings(out) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_overwrite_replaces_the_folder_only_once_the_results_are_complete(
    name, commands, toy_pair, tmp_path, monkeypatch
):
    argv, module, written = commands[name]
    out = user_folder(tmp_path)
    before = folder_digest(out)

    @contextlib.contextmanager
    def interrupted(path, **kwargs):  # Ctrl-C after the command wrote its results, just before the rename
        with outputs.output_folder(path, **kwargs) as tmp:
            yield tmp
            assert {p.name for p in tmp.iterdir()} == written and folder_digest(out) == before
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(module, "output_folder", interrupted)
        assert main([*argv, "--out", str(out), "--overwrite"]) == 130
    assert folder_digest(out) == before and siblings(out) == []

    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == written and siblings(out) == []
    assert not set(folder_digest(out)) & set(before)  # the user's files were replaced, not mixed in
    if name == "train-toy":  # the copies are the cached models, file for file
        _, rl, base = toy_pair
        assert folder_digest(out / "rl") == folder_digest(rl) and folder_digest(out / "base") == folder_digest(base)
    if name == "bench":
        assert json.loads((out / "bench.json").read_text())["results"][0]["variant"] == "rl"


@pytest.mark.parametrize("name", COMMANDS)
def test_a_file_as_out_is_refused(name, commands, tmp_path, capsys):
    argv, _, _ = commands[name]
    target = tmp_path / "report.md"
    target.write_text("mine")
    assert main([*argv, "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--out {target} is a file, not a folder; choose a folder to write")
    assert target.read_text() == "mine"
