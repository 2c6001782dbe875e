"""Experiment: does exactness matter? Selective mode over the full vocabulary vs the reference code's top-50 lists.

For each seed's toy pair (vocabulary 108): sampled accuracy (avg@k) and the changed share of selective decoding
with `candidate_top_k=None` (exact) and `candidate_top_k=50` (the reference code's vLLM lists), and, on the
exact run's responses, the total-variation distance between the two next-token distributions at every step
(`extrapolation.combine` on the same logits).

    python scripts/toy_exactness.py --seeds 0 1 2 3 4 --out docs/exactness
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolationConfig, load_pair
from hf_extrapolate.evaluation.grading import avg_at_k, over_seeds
from hf_extrapolate.extrapolation import combine
from hf_extrapolate.outputs import cached_json, settings_key
from hf_extrapolate.toy import pair_paths
from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import format_prompt, make_problems

SETTINGS = {"gamma": 1.0, "select": "delta_logp", "threshold": -0.3}  # the quickstart's selective γ = 1, τ = −0.3
TOP_K = 50


@torch.no_grad()
def distances(rl, base, ids: torch.Tensor, mask: torch.Tensor, starts: list[int]) -> dict[str, float]:
    """Total variation between the exact and the top-k selective distributions at every response position of the
    right-padded sequences ``ids`` (row i's response starts at ``starts[i]``), and each one's changed share."""
    rl_logits, base_logits = rl(ids, attention_mask=mask).logits[:, :-1], base(ids, attention_mask=mask).logits[:, :-1]
    keep = mask[:, 1:].bool() & (torch.arange(ids.shape[1] - 1)[None] >= torch.tensor(starts)[:, None] - 1)
    rl_logits, base_logits = rl_logits[keep], base_logits[keep]
    exact, rates = combine(rl_logits, base_logits, ExtrapolationConfig(**SETTINGS))
    top, top_rates = combine(rl_logits, base_logits, ExtrapolationConfig(**SETTINGS, candidate_top_k=TOP_K))
    tv = 0.5 * (exact.exp() - top.exp()).abs().sum(-1)
    return {"tv_mean": tv.mean().item(), "tv_max": tv.max().item(), "positions": int(keep.sum()),
            "changed_exact": rates.changed.mean().item(), "changed_top_k": top_rates.changed.mean().item()}  # fmt: skip


def toy_seed(seed: int, n: int, k: int) -> dict[str, Any]:
    rl_dir, base_dir = pair_paths(seed=seed)
    rl, base, tokenizer = load_pair(str(rl_dir), str(base_dir), dtype="float32")
    problems = make_problems("test", n, seed=seed)
    answers = [p["answer"] for p in problems]
    out: dict[str, Any] = {}
    for name, top_k in (("exact", None), ("top_k", TOP_K)):
        proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, candidate_top_k=top_k, **SETTINGS)
        texts = generate(rl, tokenizer, problems, k=k, seed=seed, logits_processor=[proc], batch_size=200, desc=name)
        scores = avg_at_k(texts, answers)
        out[name] = {"accuracy": sum(scores) / len(scores), "changed": proc.changed_rate,
                     "resampled": proc.resample_rate}  # fmt: skip
        if name == "exact":
            prompts = [format_prompt(p["problem"], tokenizer) for p in problems]
            starts = [len(tokenizer(t)["input_ids"]) for t in prompts]
            full = [t + c[0] for t, c in zip(prompts, texts)]
            batch = tokenizer(full, return_tensors="pt", padding=True, padding_side="right")
            out["distance"] = distances(rl, base, batch["input_ids"], batch["attention_mask"], starts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("exactness"))
    args = parser.parse_args()
    toy = {}
    for seed in dict.fromkeys(args.seeds):
        rl_dir, _ = pair_paths(seed=seed)
        key = settings_key(1, seed, args.n_problems, args.samples, SETTINGS, TOP_K)
        path = rl_dir.parent / "results" / f"exactness-{rl_dir.name}-{key}.json"
        toy[seed] = cached_json(path, lambda s=seed: toy_seed(s, args.n_problems, args.samples), f"toy seed {seed}")
        print(f"seed {seed}: {toy[seed]}", flush=True)

    def row(name: str, values: dict[int, float], scale: float = 100, fmt: str = ".2f") -> str:
        s = over_seeds(values)
        cells = " | ".join(f"{scale * v:{fmt}}" for v in values.values())
        return f"| {name} | {cells} | {scale * s['mean']:{fmt}} ± {scale * s['ci95']:{fmt.lstrip('+')}} |"

    seeds = list(toy)
    lines = [f"Selective γ = {SETTINGS['gamma']:g}, τ = {SETTINGS['threshold']:g}: full vocabulary (exact) vs the "
             f"reference code's top-{TOP_K} lists; mean over seeds ± 95% Student-t interval.", "",
             "| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95% CI |", "|---" * (len(seeds) + 2) + "|",
             row("toy: accuracy, exact (%)", {s: toy[s]["exact"]["accuracy"] for s in seeds}, fmt=".1f"),
             row("toy: accuracy, top-50 (%)", {s: toy[s]["top_k"]["accuracy"] for s in seeds}, fmt=".1f"),
             row("toy: accuracy, top-50 − exact (points)", {s: toy[s]["top_k"]["accuracy"] - toy[s]["exact"]["accuracy"]
                                                         for s in seeds}, fmt="+.1f"),
             row("toy: changed share, exact (%)", {s: toy[s]["exact"]["changed"] for s in seeds}),
             row("toy: changed share, top-50 (%)", {s: toy[s]["top_k"]["changed"] for s in seeds}),
             row("toy: mean TV distance per step", {s: toy[s]["distance"]["tv_mean"] for s in seeds}, 1, ".2e"),
             row("toy: largest TV distance at a step", {s: toy[s]["distance"]["tv_max"] for s in seeds}, 1, ".2e"),
             ]  # fmt: skip
    command = "python scripts/toy_exactness.py --seeds " + " ".join(map(str, seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exactness.json").write_text(json.dumps({"command": command, "toy": toy}, indent=2))
    (args.out / "exactness.md").write_text(f"Command: `{command}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
