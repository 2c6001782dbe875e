"""Performance regressions checked without timing (what the base model is fed at each step), and the plumbing
of `hf-extrapolate bench` on a tiny pair."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM
from hf_extrapolate.bench import GRIDS, _run_one, few_repeats_warning, lower_bound, markdown, measure, targets

PROMPTS = ["12+3=", "1+1234567=", "a"]  # left-padded to one length
NEW = 6


def record_forward(model, monkeypatch) -> list[tuple[tuple[int, ...], object]]:
    """Record ``(input_ids.shape, logits_to_keep)`` of every forward call of ``model``."""
    calls: list[tuple[tuple[int, ...], object]] = []
    forward = model.forward

    def recording(*args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        calls.append((tuple(ids.shape), kwargs.get("logits_to_keep")))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    return calls


@pytest.mark.parametrize("route", ["processor", "wrapper"])
@pytest.mark.parametrize("beams", [1, 2])
def test_base_model_is_fed_one_new_token_per_step(pair, tokenizer, monkeypatch, route, beams):
    """After the prompt, the base model sees exactly one new token per row and step, and returns one position
    of logits: no recomputation of the prefix, no vocabulary-sized logits for every prompt position. Beam
    search reorders rows at every step, which must reorder the cache rather than recompute it."""
    rl, base = pair
    calls = record_forward(base, monkeypatch)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, num_beams=beams, do_sample=False, pad_token_id=0)
    if route == "processor":
        rl.generate(**DeltaLogpExtrapolation(base, 0.5, tokenizer=tokenizer).generate_kwargs(rl, **enc, **kwargs))
    else:
        ExtrapolatedForCausalLM(rl, base, 0.5, tokenizer=tokenizer).generate(**enc, **kwargs)
    rows, prompt = len(PROMPTS) * beams, enc.input_ids.shape[1]
    assert calls == [((rows, prompt), 1)] + [((rows, 1), 1)] * (NEW - 1)


def test_measure_runs_every_variant_on_a_tiny_pair():
    # in fresh processes, as `bench` runs them (a long-lived test process may hold more memory than any one run
    # peaks at); the vLLM variants: tests/test_vllm.py
    cases = {v: dict(variant=v, prompt=4, new=5, batch=2, preset="tiny") for v in GRIDS["hf"]["variants"]}
    results = {v: _run_one(case) for v, case in cases.items()}
    for variant, result in results.items():
        assert result["tokens"] == 5, variant
        assert result["seconds"] > 0 and result["peak_bytes"] > 0, variant
    expected = {v: r["expected_bytes"] for v, r in results.items()}
    assert expected["processor"] == expected["wrapper"] == 2 * expected["rl"]  # two same-size models and caches
    assert expected["rl"] < expected["nocache"] < expected["processor"]  # two models, one cache


def test_static_cache_runs_every_route():
    """``bench --static-cache``: each route decodes its N tokens with static caches (``--compile`` on top of it is
    a GPU measurement, too slow to compile here)."""
    for variant in ("rl", "processor", "wrapper", "concurrent", "cfg"):  # fresh processes, as `bench` runs them
        result = _run_one(dict(variant=variant, prompt=4, new=5, batch=2, preset="tiny", static_cache=True))
        assert result["tokens"] == 5, variant


def test_no_cache_run_cut_short_gives_a_lower_bound():
    stamps = list(itertools.accumulate(range(11)))  # step i costs i: 10 steps done in 55 s
    assert lower_bound(stamps, 10) == 55
    assert lower_bound(stamps, 20) == 55 + 10 * 10  # the true time, if the cost keeps growing, is 210
    result = measure("nocache", 4, 400, 1, preset="tiny", nocache_budget=0.2)
    assert 0 < result["tokens"] < 400 and result["seconds"] > 0.2


def test_targets_and_table_from_rows():
    def row(new, variant, seconds, peak=100.0, expected=100.0, lower_bound=False):
        return {"prompt": 32, "new": new, "batch": 1, "variant": variant, "seconds": seconds, "cpu_seconds": seconds,
                "tokens": new, "lower_bound": lower_bound, "runs": [seconds], "tokens_per_s": new / seconds,
                "peak_bytes": peak, "expected_bytes": expected, "startup_seconds": 0.5}  # fmt: skip

    rows = [row(256, "rl", 1.0), row(256, "processor", 2.0, 230.0, 200.0), row(1024, "rl", 4.0),
            row(1024, "processor", 9.0), row(1024, "nocache", 50.0, lower_bound=True)]  # fmt: skip
    for r in rows:  # the ratio fields `run` adds
        ref = next(x for x in rows if x["variant"] == "rl" and x["new"] == r["new"])
        r["vs_rl"] = r["cpu_vs_rl"] = r["seconds"] / ref["seconds"]
        r["added_vs_base"] = None
    checks = {c["target"]: c for c in targets(rows)}
    assert checks["processor time / RL time, 32/256, batch 1"]["met"]
    assert not checks["processor peak / (models + caches), 32/256, batch 1"]["met"]  # 1.15 > 1.1
    assert not checks["processor time 32/1024 / time 32/256, batch 1"]["met"]  # 4.5 > 4.4
    nocache = checks["no-cache time / processor time (lower bound), 32/1024, batch 1"]
    assert nocache["met"] and nocache["value"] == pytest.approx(50 / 9, abs=1e-3)
    text = markdown(rows, list(checks.values()), {"cpu": "test"}, "hf-extrapolate bench")
    assert "| 32/1024 | 1 | nocache | ≤ 20.5 | ≥ 50.00 |" in text and "**no**" in text


@pytest.mark.slow
def test_bench_command_writes_markdown_and_json(tmp_path):
    """The whole command, subprocess workers included, on the tiny pair."""
    cmd = [sys.executable, "-m", "hf_extrapolate.cli", "bench", "--model", "tiny", "--lengths", "4/4,4/8",
           "--batches", "1", "--repeats", "2", "--variants", "rl,processor,nocache", "--out", tmp_path]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["new"], r["variant"]) for r in report["results"]} == {
        (n, v) for n in (4, 8) for v in ("rl", "processor", "nocache")
    }
    assert all(len(r["runs"]) == 2 for r in report["results"])
    assert report["machine"]["torch"] == torch.__version__
    table = (tmp_path / "bench.md").read_text()
    assert "| 4/8 | 1 | processor |" in table and "processor peak / (models + caches), 4/8, batch 1" in table
    assert table.startswith("> WARNING: 2 repeat(s) per cell")  # fewer than 3: the ratios carry a warning
    assert few_repeats_warning(3) is None and "1 repeat(s)" in few_repeats_warning(1)
