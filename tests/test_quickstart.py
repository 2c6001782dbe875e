"""`quickstart --seeds`: the aggregation over seeds against hand-computed values, and resuming a multi-seed run."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from hf_extrapolate.cli import main
from hf_extrapolate.toy import quickstart

T_975_2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (3 seeds): 0.95 / √(2 · 0.975 · 0.025)


def _runs(sampled: dict[int, dict[str, float]]) -> dict[int, list[quickstart.Method]]:
    """Methods of each seed with the given sampled accuracies (greedy irrelevant here)."""
    runs = {}
    for seed, accuracies in sampled.items():
        ms = quickstart.methods()
        for m in ms:
            m.results = {"sampled": {"accuracy": accuracies.get(m.name, 0.5), "ci95": 0.0},
                         "greedy": {"accuracy": 0.5, "ci95": 0.0}}  # fmt: skip
        runs[seed] = ms
    return runs


def test_across_seeds_against_hand_computed_values() -> None:
    runs = _runs({
        0: {"base": 0.40, "RL": 0.80, "selective replace τ=-0.3": 0.85, "selective γ=1 τ=-0.3": 0.90},
        1: {"base": 0.30, "RL": 0.60, "selective replace τ=-0.3": 0.62, "selective γ=1 τ=-0.3": 0.66},
        2: {"base": 0.35, "RL": 0.70, "selective replace τ=-0.3": 0.71, "selective γ=1 τ=-0.3": 0.71},
    })  # fmt: skip
    summary = quickstart.across_seeds(runs)
    assert pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025)) == T_975_2
    rl = summary["methods"]["RL"]  # 0.8, 0.6, 0.7: mean 0.7, s = 0.1
    assert rl["mean"] == pytest.approx(0.7) and rl["ci95"] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    gain = summary["differences"]["RL − base"]  # 0.40, 0.30, 0.35: mean 0.35, s = 0.05
    assert gain["per_seed"] == pytest.approx({0: 0.40, 1: 0.30, 2: 0.35})
    assert gain["mean"] == pytest.approx(0.35) and gain["ci95"] == pytest.approx(T_975_2 * 0.05 / math.sqrt(3))
    paired = summary["differences"]["selective γ=1 τ=-0.3 − RL"]  # 0.10, 0.06, 0.01: mean 0.0566.., s by hand
    d = [0.10, 0.06, 0.01]
    mean = sum(d) / 3
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert paired["mean"] == pytest.approx(mean) and paired["ci95"] == pytest.approx(T_975_2 * s / math.sqrt(3))
    over_replace = summary["differences"]["selective γ=1 τ=-0.3 − selective replace τ=-0.3"]
    assert over_replace["per_seed"] == pytest.approx({0: 0.05, 1: 0.04, 2: 0.0})
    assert "full γ=2 − RL" in summary["differences"] and "selective replace τ=-0.3 − RL" in summary["differences"]
    text = quickstart.seeds_table(summary, 4)
    assert "| RL − base | +40.0 | +30.0 | +35.0 | +35.0 ± 12.4 |" in text  # 4.3027 · 5 / √3 = 12.42


@pytest.fixture
def counted(pair_dir, tmp_path, monkeypatch) -> list[tuple[int, str]]:
    """quickstart on a copy of the tiny pair for every seed, its decoding replaced by a fake that records
    (seed, method) and gives accuracies that depend on both."""
    pair = tmp_path / "cache"
    shutil.copytree(pair_dir, pair)
    monkeypatch.setattr("hf_extrapolate.toy.train.pair_paths", lambda seed: (pair / "rl", pair / "base"))
    calls: list[tuple[int, str]] = []

    def fake(method, models, tokenizer, problems, samples, seed) -> None:
        calls.append((seed, method.name))
        accuracy = 0.3 + 0.1 * seed + (0.4 if method.model == "rl" else 0.0)
        method.results = {mode: {"accuracy": accuracy, "ci95": 0.01} for mode in ("sampled", "greedy")}

    monkeypatch.setattr(quickstart, "evaluate", fake)
    return calls


def test_a_multi_seed_run_resumes_without_redoing_a_seed(counted, tmp_path, capsys) -> None:
    common = ["--n-problems", "1", "--samples", "2"]
    assert main(["quickstart", "--seeds", "0", "1", *common, "--out", str(tmp_path / "a")]) == 0
    n_methods = len(quickstart.methods())
    assert sorted({seed for seed, _ in counted}) == [0, 1] and len(counted) == 2 * n_methods
    counted.clear()
    # the same seeds and one more (as after an interruption, or when extending a run): only seed 2 is evaluated
    assert main(["quickstart", "--seeds", "0", "1", "2", *common, "--out", str(tmp_path / "b")]) == 0
    assert {seed for seed, _ in counted} == {2} and len(counted) == n_methods
    err = capsys.readouterr().err
    assert "quickstart of seed 0 already done" in err and "quickstart of seed 1 already done" in err
    assert "seed 2 (3 of 3)" in err
    report = json.loads((tmp_path / "b" / "quickstart.json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [0, 1, 2]
    gain = report["across_seeds"]["differences"]["RL − base"]
    assert gain["per_seed"] == pytest.approx({"0": 0.4, "1": 0.4, "2": 0.4}) and gain["ci95"] == pytest.approx(0.0)
    assert report["across_seeds"]["methods"]["base"]["mean"] == pytest.approx(0.4)  # 0.3, 0.4, 0.5
    counted.clear()
    assert main(["quickstart", "--seeds", "0", "1", "2", "--samples", "3", "--n-problems", "1",
                 "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    assert len(counted) == 3 * n_methods  # other settings: a different run, nothing reused


def test_one_seed_keeps_the_single_table(counted, tmp_path, capsys) -> None:
    out_dir = tmp_path / "out"
    assert main(["quickstart", "--seed", "3", "--n-problems", "1", "--samples", "2", "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("hf-extrapolate quickstart: 9 decoding methods on 1 held-out problems")
    assert f"results to {out_dir}" in captured.err.splitlines()[0]  # said before any long work
    assert "seed 3), 1 held-out problems" in captured.out and "Over " not in captured.out
    assert "across_seeds" not in json.loads((out_dir / "quickstart.json").read_text())
