"""The identification analysis: per-token statistics against a direct per-row computation, token replacement
at its two extremes against each model alone, the replaced share against the processor, and the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import perturbed, tiny_model

from hf_extrapolate.analysis import (
    METRICS,
    Sampling,
    generate_responses,
    replacement_responses,
    threshold_for_share,
    token_statistics,
)
from hf_extrapolate.analysis.report import share_to_reach
from hf_extrapolate.analysis.token_stats import until_first

VOCAB = 103


def _direct(rl, base, tokens: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """Every statistic of an unpadded sequence, one row, float64, written out from the definitions."""
    with torch.no_grad():
        lr = torch.log_softmax(rl(tokens[None]).logits[0, :-1, :width].double(), -1)
        lb = torch.log_softmax(base(tokens[None]).logits[0, :-1, :width].double(), -1)
    pr, pb = lr.exp(), lb.exp()
    nxt = tokens[1:, None]
    kl, rkl = (pr * (lr - lb)).sum(-1), (pb * (lb - lr)).sum(-1)
    return {
        "delta_logp": (lr.gather(-1, nxt) - lb.gather(-1, nxt))[:, 0],
        "base_entropy": -(pb * lb).sum(-1),
        "rl_entropy": -(pr * lr).sum(-1),
        "kl": kl,
        "reverse_kl": rkl,
        "js": (kl + rkl) / 2,
    }


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_statistics_match_direct_computation(arch, side):
    base = tiny_model(arch, vocab_size=VOCAB)
    rl = perturbed(base, vocab_size=VOCAB + 7)  # wider RL embedding: both are cut to the tokenizer's 103
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 4, 12]
    rows = [torch.randint(3, VOCAB, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    score = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, cols], mask[i, cols] = row, 1
        score[i, cols] = torch.arange(len(row)) >= len(row) // 2  # score the second half ("response")

    stats = token_statistics(rl, base, ids, mask, score, vocab_size=VOCAB)
    assert set(stats) == set(METRICS)
    for i, row in enumerate(rows):
        direct = _direct(rl, base, row, VOCAB)
        offset = width - len(row) if side == "left" else 0
        scored = torch.arange(len(row)) >= len(row) // 2
        for metric in METRICS:
            got = stats[metric][i, offset : offset + len(row)]
            assert torch.isnan(got[~scored]).all() and torch.isnan(stats[metric][i, mask[i] == 0]).all()
            want = direct[metric][scored[1:].nonzero()[:, 0]].float()  # direct[t-1] describes token t
            torch.testing.assert_close(got[scored], want, atol=2e-4, rtol=1e-4, msg=f"{metric} row {i}")


def test_until_first_keeps_the_stop_token():
    tokens = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 0, 0]])
    assert until_first(tokens, [2]).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


PROMPTS = ["Compute 1+2.", "Compute 33-4+5."]


@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, 1.0), (0.8, 0.7)], ids=["greedy", "sampled"])
def test_replacement_extremes_equal_each_model_alone(pair, tokenizer, temperature, top_p):
    """Flagging nothing gives the proposer's own output, flagging everything the other model's (same seed)."""
    rl, base = pair
    sampling = Sampling(samples=2, max_new_tokens=6, temperature=temperature, top_p=top_p, seed=3, eos_token_id=(2,))
    alone = {
        name: generate_responses(model, tokenizer, PROMPTS, **sampling.__dict__)[0]
        for name, model in (("base", base), ("rl", rl))
    }
    cases = [  # (direction, τ, whose output it must equal, share replaced); reverse flags Δ >= τ
        ("forward", -1e9, "base", 0.0),
        ("forward", 1e9, "rl", 1.0),
        ("reverse", 1e9, "rl", 0.0),
        ("reverse", -1e9, "base", 1.0),
    ]
    for direction, tau, source, share in cases:
        _, [batch], [m] = replacement_responses(
            rl, base, tokenizer, PROMPTS, sampling, metric="delta_logp", direction=direction, threshold=tau
        )
        assert torch.equal(batch.sequences, alone[source].sequences), (direction, tau)
        assert batch.completions == alone[source].completions
        torch.testing.assert_close(m[batch.response_mask], torch.full_like(m, share)[batch.response_mask])


def test_replaced_share_matches_processor_resample_rate(pair, tokenizer):
    """Over the emitted response tokens (up to EOS), the teacher-forced replacement probability averages to
    the resample rate the processor accumulated while generating."""
    rl, base = pair
    sampling = Sampling(
        samples=3, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=0, eos_token_id=(tokenizer.eos_token_id,)
    )
    runs = (("forward", "delta_logp", -0.3), ("reverse", "kl", 0.1), ("forward", "random", 0.2))
    lengths = []
    for direction, metric, tau in runs:
        proc, [batch], [m] = replacement_responses(
            rl, base, tokenizer, PROMPTS, sampling, metric=metric, direction=direction, threshold=tau
        )
        share = m[batch.response_mask].mean().item()
        assert 0.0 < share < 1.0
        assert math.isclose(share, proc.resample_rate, rel_tol=1e-4, abs_tol=1e-6), (metric, share, proc.resample_rate)
        lengths += batch.response_mask.sum(1).tolist()
    assert min(lengths) < sampling.max_new_tokens  # some row stopped at EOS, so finished rows are excluded


def test_thresholds_and_recovery_share():
    import numpy as np

    values = np.arange(100, dtype=float)
    assert threshold_for_share("delta_logp", "forward", values, 0.1) == pytest.approx(9.9)  # flags Δ <= τ
    assert threshold_for_share("delta_logp", "reverse", values, 0.1) == pytest.approx(89.1)  # flags Δ >= τ
    assert threshold_for_share("kl", "forward", values, 0.1) == pytest.approx(89.1)
    assert threshold_for_share("random", "forward", None, 0.1) == 0.1
    assert share_to_reach([(0.1, 0.4), (0.2, 0.8)], start=0.2, target=0.6) == pytest.approx(0.15)
    assert share_to_reach([(0.1, 0.3)], start=0.2, target=0.6) is None
    assert share_to_reach([(0.1, 0.1)], start=0.5, target=0.2) == pytest.approx(0.075)  # falling (reverse)


def test_analyze_command_writes_every_file(pair, pair_dir, tmp_path, capsys):
    from hf_extrapolate.cli import main

    data = tmp_path / "problems.jsonl"
    data.write_text('{"problem": "Compute 1+2.", "answer": "3"}\n\n{"problem": "Compute 5-1.", "answer": 4}\n')
    out = tmp_path / "out"
    argv = ["analyze", "--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"), "--data", str(data)]
    argv += ["--out", str(out), "--samples", "2", "--max-new-tokens", "4", "--metrics", "delta_logp,kl"]
    assert main([*argv, "--shares", "0.2", "--directions", "forward,reverse"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "analysis.json", "tokens.npz", "distributions.png", "replacement.png", "summary.md",
    }  # fmt: skip
    result = json.loads((out / "analysis.json").read_text())
    assert result["settings"]["problems"] == 2 and set(result["reference"]) == {"base", "rl"}
    assert [(r["direction"], r["metric"]) for r in result["replacement"]] == [
        ("forward", "delta_logp"), ("forward", "kl"), ("reverse", "delta_logp"), ("reverse", "kl"),
    ]  # fmt: skip
    assert result["replacement"][2]["select"] == "delta_logp_ge"
    summary = (out / "summary.md").read_text()
    assert "hf-extrapolate analyze --rl" in summary and "--dry-run" not in summary and "False" not in summary
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--dtype", "float32"]) == 0  # the memory estimate, nothing loaded
    assert json.loads(capsys.readouterr().out)["base"]["parameters"] == sum(p.numel() for p in pair[1].parameters())

    assert main([*argv, "--shares", "0.2", "--metrics", "entropy"]) == 2
    data.write_text('{"question": "Compute 1+2."}\n')
    assert main([*argv, "--shares", "0.2"]) == 2
    assert "problems.jsonl:1: a record needs a 'problem' (or 'question') and an 'answer'" in capsys.readouterr().err


T_975_2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (3 seeds)


def _seed_result(base: float, rl: float, forward: dict, reverse: dict | None = None) -> dict:
    shares = {"forward": forward, **({"reverse": reverse} if reverse else {})}
    return {"reference": {"base": {"accuracy": base}, "rl": {"accuracy": rl}}, "recovery_shares": shares}


def test_analysis_over_seeds_against_hand_computed_values():
    from hf_extrapolate.analysis.seeds import across_seeds, seeds_markdown

    results = {
        0: _seed_result(0.40, 0.80, {"delta_logp": 0.01, "kl": 0.15, "random": None}, {"delta_logp": 0.2}),
        1: _seed_result(0.30, 0.60, {"delta_logp": 0.02, "kl": 0.20, "random": None}, {"delta_logp": 0.1}),
        2: _seed_result(0.35, 0.70, {"delta_logp": 0.03, "kl": None, "random": 0.3}, {"delta_logp": 0.3}),
    }
    summary = across_seeds(results)
    gain = summary["rl_gain"]  # 0.40, 0.30, 0.35: mean 0.35, s = 0.05
    assert gain["per_seed"] == pytest.approx({0: 0.4, 1: 0.3, 2: 0.35})
    assert gain["mean"] == pytest.approx(0.35) and gain["ci95"] == pytest.approx(T_975_2 * 0.05 / math.sqrt(3))
    forward = summary["recovery"]["forward"]
    dlp = forward["shares"]["delta_logp"]  # 0.01, 0.02, 0.03: mean 0.02, s = 0.01
    assert dlp["mean"] == pytest.approx(0.02) and dlp["ci95"] == pytest.approx(T_975_2 * 0.01 / math.sqrt(3))
    kl = forward["shares"]["kl"]  # reached on seeds 0 and 1 only: 0.15, 0.20
    assert (kl["reached"], kl["seeds"]) == (2, 3) and kl["mean"] == pytest.approx(0.175)
    assert kl["ci95"] == pytest.approx(12.706204736174707 * math.sqrt(0.00125) / math.sqrt(2))  # t(0.975, 1 dof)
    paired = forward["differences"]["kl − delta_logp"]  # only where both reached: 0.14, 0.18
    assert paired["per_seed"] == pytest.approx({0: 0.14, 1: 0.18}) and paired["mean"] == pytest.approx(0.16)
    random = forward["shares"]["random"]
    assert random["reached"] == 1 and random["mean"] == pytest.approx(0.3) and math.isnan(random["ci95"])
    assert summary["recovery"]["reverse"]["differences"] == {}  # Δlog p alone: nothing to pair it with
    text = seeds_markdown(summary, "cmd")
    assert "| RL − base | +40.0 | +30.0 | +35.0 | +35.0 ± 12.4 |" in text
    assert "| 1.0% | 2.0% | 3.0% | 2.0% ± 2.5 (3 of 3 seeds) |" in text  # Δlog p: 4.3027 · 1 / √3 = 2.48
    assert "| kl − delta_logp (paired) | +14.0 | +18.0 | — | +16.0% ± 25.4 (2 seeds) |" in text
    assert "| not reached (2 of 3 seeds) |" not in text and "| 15.0% | 20.0% | not reached | 17.5% ± " in text


def test_analyze_over_seeds_resumes_without_redoing_a_seed(pair_dir, tmp_path, monkeypatch, capsys):
    """`analyze --seeds` on the tiny pair standing in for every seed's toy pair: a second run with one more seed
    analyses only the new one, and the report holds every seed."""
    import shutil

    from hf_extrapolate.analysis import command
    from hf_extrapolate.cli import main

    pairs = tmp_path / "cache"
    shutil.copytree(pair_dir, pairs)
    monkeypatch.setattr("hf_extrapolate.toy.train.pair_paths", lambda seed: (pairs / "rl", pairs / "base"))
    analysed: list[int] = []
    real = command._analyse

    def counting(args, seed, out, line):
        analysed.append(seed)
        return real(args, seed, out, line)

    monkeypatch.setattr(command, "_analyse", counting)
    argv = ["analyze", "--data", "toy", "--n-problems", "2", "--samples", "2", "--max-new-tokens", "6",
            "--metrics", "delta_logp,kl", "--shares", "0.2,0.5", "--directions", "forward"]  # fmt: skip
    assert main([*argv, "--seeds", "0", "1", "--out", str(tmp_path / "a")]) == 0
    assert analysed == [0, 1]
    analysed.clear()
    assert main([*argv, "--seeds", "0", "1", "2", "--out", str(tmp_path / "b")]) == 0
    assert analysed == [2]
    err = capsys.readouterr().err
    assert "seed 0 already analysed" in err and "seed 1 already analysed" in err and "seed 2 (3 of 3)" in err
    out = tmp_path / "b"
    assert {p.name for p in out.iterdir()} == {"seed-0", "seed-1", "seed-2", "seeds.json", "seeds.md",
                                               "recovery_over_seeds.png"}  # fmt: skip
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and "--seeds 0 1 2" in summary["command"]
    per_seed = {s: json.loads((out / f"seed-{s}" / "analysis.json").read_text()) for s in range(3)}
    assert [per_seed[s]["settings"]["seed"] for s in range(3)] == [0, 1, 2]  # each seed's own sampling
    rl = [per_seed[s]["reference"]["rl"]["accuracy"] for s in range(3)]
    assert summary["accuracy"]["RL"]["mean"] == pytest.approx(sum(rl) / 3)
    analysed.clear()
    assert main([*argv, "--samples", "3", "--seeds", "0", "--out", str(tmp_path / "c")]) == 0
    assert analysed == [0]  # other settings: a different run, nothing reused
    assert main([*argv, "--seeds", "0", "--rl", "x", "--base", "y", "--out", str(tmp_path / "d")]) == 2
    assert "--seeds analyses the toy pair of each seed" in capsys.readouterr().err
