"""Experiment: the paper's settings grid for selective extrapolation on the toy pair, over seeds.

τ × γ × top-p (the paper's grid: τ ∈ {−0.2, −0.3, −0.4, −0.5}, γ ∈ {0, 0.05, 0.1, 0.5, 1}, top-p ∈ {0.7, 1.0}),
each sampled at temperature 1 on the held-out problems of each seed's pair, beside the RL model alone at the
same top-p. Writes grid.json, grid.md and heat maps of accuracy, of selective − RL (paired by seed) and of the
exact share of changed tokens (`DeltaLogpExtrapolation.changed_rate`). A seed already run with the same settings
is reused from the results cache beside its pair.

    python scripts/toy_grid.py --seeds 0 1 2 3 4 --out docs/grid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hf_extrapolate import DeltaLogpExtrapolation, load_pair
from hf_extrapolate.evaluation.grading import avg_at_k, over_seeds
from hf_extrapolate.outputs import cached_json, settings_key
from hf_extrapolate.toy import pair_paths
from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import make_problems

TAUS = (-0.2, -0.3, -0.4, -0.5)
GAMMAS = (0.0, 0.05, 0.1, 0.5, 1.0)
TOP_PS = (0.7, 1.0)


def cell(tau: float, gamma: float, top_p: float) -> str:
    return f"τ={tau:g} γ={gamma:g} top-p={top_p:g}"


def run_seed(seed: int, n: int, k: int) -> dict[str, Any]:
    """Accuracy (avg@k) of RL alone at each top-p and of every grid cell, with each cell's changed share."""
    rl_dir, base_dir = pair_paths(seed=seed)
    rl, base, tokenizer = load_pair(str(rl_dir), str(base_dir), dtype="float32")
    problems = make_problems("test", n, seed=seed)
    answers = [p["answer"] for p in problems]

    def accuracy(completions: list[list[str]]) -> float:
        scores = avg_at_k(completions, answers)
        return sum(scores) / len(scores)

    out: dict[str, Any] = {"rl": {}, "cells": {}}
    for top_p in TOP_PS:
        rl_alone = generate(rl, tokenizer, problems, k=k, seed=seed, top_p=top_p, batch_size=200, desc="RL")
        out["rl"][f"{top_p:g}"] = accuracy(rl_alone)
        for tau in TAUS:
            for gamma in GAMMAS:
                proc = DeltaLogpExtrapolation(base, gamma=gamma, select="delta_logp", threshold=tau, top_p=top_p,
                                              temperature=1.0, tokenizer=tokenizer)  # fmt: skip
                texts = generate(rl, tokenizer, problems, k=k, seed=seed, logits_processor=[proc], batch_size=200,
                                 desc=cell(tau, gamma, top_p))  # fmt: skip
                out["cells"][cell(tau, gamma, top_p)] = {"accuracy": accuracy(texts), "changed": proc.changed_rate,
                                                         "resampled": proc.resample_rate}  # fmt: skip
        print(f"seed {seed}, top-p {top_p:g}: RL {100 * out['rl'][f'{top_p:g}']:.1f}", flush=True)
    return out


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per cell, over seeds: accuracy, accuracy − RL at the same top-p (paired by seed) and the changed share."""
    cells = {}
    for top_p in TOP_PS:
        for tau in TAUS:
            for gamma in GAMMAS:
                name = cell(tau, gamma, top_p)
                rows = {s: r["cells"][name] for s, r in runs.items()}
                cells[name] = {
                    "accuracy": over_seeds({s: v["accuracy"] for s, v in rows.items()}),
                    "minus_rl": over_seeds({s: v["accuracy"] - runs[s]["rl"][f"{top_p:g}"] for s, v in rows.items()}),
                    "changed": over_seeds({s: v["changed"] for s, v in rows.items()}),
                }
    rl = {f"{p:g}": over_seeds({s: r["rl"][f"{p:g}"] for s, r in runs.items()}) for p in TOP_PS}
    return {"seeds": list(runs), "rl": rl, "cells": cells}


def heat_maps(summary: dict[str, Any], path: Path) -> None:
    """Rows τ, columns γ; one row of panels per quantity (accuracy, − RL, changed share), one column per top-p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    quantities = (("accuracy", "accuracy (%)", "viridis"), ("minus_rl", "selective − RL (points)", "RdBu"),
                  ("changed", "tokens changed (%)", "magma"))  # fmt: skip
    fig, axes = plt.subplots(len(quantities), len(TOP_PS), figsize=(5.2 * len(TOP_PS), 3.4 * len(quantities)))
    for row, (key, label, cmap) in enumerate(quantities):
        grids = {p: np.array([[100 * summary["cells"][cell(t, g, p)][key]["mean"] for g in GAMMAS] for t in TAUS])
                 for p in TOP_PS}  # fmt: skip
        values = np.concatenate([g.ravel() for g in grids.values()])
        if key == "minus_rl":
            bound = max(abs(values).max(), 1e-9)
            vmin, vmax = -bound, bound
        else:
            vmin, vmax = values.min(), values.max()
        for col, top_p in enumerate(TOP_PS):
            ax = axes[row, col]
            image = ax.imshow(grids[top_p], cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            for i, tau in enumerate(TAUS):
                for j, gamma in enumerate(GAMMAS):
                    ci = 100 * summary["cells"][cell(tau, gamma, top_p)][key]["ci95"]
                    shade = float(image.norm(grids[top_p][i, j]))  # dark text on the light end of each map
                    light = abs(shade - 0.5) < 0.3 if key == "minus_rl" else shade > 0.6
                    ax.text(j, i, f"{grids[top_p][i, j]:.1f}\n±{ci:.1f}", ha="center", va="center", fontsize=7,
                            color="black" if light else "white")  # fmt: skip
            ax.set_xticks(range(len(GAMMAS)), [f"{g:g}" for g in GAMMAS])
            ax.set_yticks(range(len(TAUS)), [f"{t:g}" for t in TAUS])
            ax.set_xlabel("γ")
            ax.set_ylabel("τ")
            rl = summary["rl"][f"{top_p:g}"]
            ax.set_title(f"{label}, top-p {top_p:g} (RL alone {100 * rl['mean']:.1f})", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Selective extrapolation on the toy pair: mean over {len(summary['seeds'])} seeds ± 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, Any], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Mean over seeds {summary['seeds']} ± 95% Student-t interval over seeds.",
        "",
        "| top-p | τ | γ | accuracy | selective − RL (paired) | tokens changed |",
        "|---|---|---|---|---|---|",
    ]
    for p in TOP_PS:
        rl = summary["rl"][f"{p:g}"]
        lines.append(f"| {p:g} | RL alone | | {100 * rl['mean']:.1f} ± {100 * rl['ci95']:.1f} | | |")
        for t in TAUS:
            for g in GAMMAS:
                c = summary["cells"][cell(t, g, p)]
                lines.append(f"| {p:g} | {t:g} | {g:g} | {100 * c['accuracy']['mean']:.1f} ± "
                             f"{100 * c['accuracy']['ci95']:.1f} | {100 * c['minus_rl']['mean']:+.1f} ± "
                             f"{100 * c['minus_rl']['ci95']:.1f} | {100 * c['changed']['mean']:.2f}% ± "
                             f"{100 * c['changed']['ci95']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (avg@k)")
    parser.add_argument("--out", type=Path, default=Path("grid"))
    args = parser.parse_args()
    runs = {}
    for i, seed in enumerate(dict.fromkeys(args.seeds)):
        print(f"seed {seed} ({i + 1} of {len(args.seeds)})", flush=True)
        rl_dir, _ = pair_paths(seed=seed)
        key = settings_key(1, seed, args.n_problems, args.samples, TAUS, GAMMAS, TOP_PS)
        path = rl_dir.parent / "results" / f"grid-{rl_dir.name}-{key}.json"
        compute = lambda s=seed: run_seed(s, args.n_problems, args.samples)  # noqa: E731
        runs[seed] = cached_json(path, compute, f"grid of seed {seed}")
    summary = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/toy_grid.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--n-problems", str(args.n_problems), "--samples", str(args.samples)]
    )
    (args.out / "grid.json").write_text(json.dumps({"command": command, **summary, "per_seed": runs}, indent=2))
    (args.out / "grid.md").write_text(markdown(summary, command) + "\n![grid](grid.png)\n")
    heat_maps(summary, args.out / "grid.png")
    print(markdown(summary, command))


if __name__ == "__main__":
    main()
