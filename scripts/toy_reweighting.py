"""Experiment: base vs GRPO vs GRPO with the paper's token reweighting on the toy task, over several seeds.

Trains (or reuses) one base model per seed and one RL model per (seed, method), samples `k` completions per
held-out problem at temperature 1 (and one greedy), and writes JSON, a Markdown table and a PNG plot.

    python scripts/toy_reweighting.py --seeds 0 1 2 --methods none direction dominate --out docs/results_training
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_extrapolate.evaluation.grading import avg_at_k, mean_interval
from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import make_problems
from hf_extrapolate.toy.train import ToySettings, pair_paths


def evaluate(model_dir: Path, problems: list[dict], k: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = [p["answer"] for p in problems]
    sampled = avg_at_k(generate(model, tokenizer, problems, k=k, batch_size=100, desc=model_dir.name), answers)
    greedy = avg_at_k(generate(model, tokenizer, problems, do_sample=False, batch_size=100), answers)
    train_seconds = json.loads((model_dir / "toy_settings.json").read_text())["train_seconds"]
    return {"sampled": sampled, "greedy": greedy, "train_seconds": train_seconds}


def avg(values: list[float]) -> float:
    return sum(values) / len(values)


def fmt(values: list[float]) -> str:
    mean, half = mean_interval(values)
    return f"{100 * mean:.1f} ± {100 * half:.1f}"


def plot(results: dict, methods: list[str], path: Path, title: str) -> None:
    """Each seed as a line across base → methods (the design is paired), and the mean over seeds with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["base", *methods]
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, r in results.items():
        ax.plot(x, [100 * avg(r[n]["sampled"]) for n in names], "o-", color="gray", alpha=0.6, lw=1)
        ax.annotate(f"seed {seed}", (x[-1], 100 * avg(r[names[-1]]["sampled"])), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8, color="gray")  # fmt: skip
    means = [mean_interval([avg(r[n]["sampled"]) for r in results.values()]) for n in names]
    ax.errorbar(x, [100 * m for m, _ in means], yerr=[100 * h for _, h in means], fmt="s", color="black",
                capsize=4, label="mean over seeds, 95% CI")  # fmt: skip
    ax.set_xticks(x, [n if n != "none" else "GRPO" for n in names])
    ax.set_xlim(-0.3, len(names) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("sampled accuracy, avg@k (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["none", "direction", "dominate"])
    parser.add_argument("--reweight-c", type=float, default=0.2)
    parser.add_argument("--grpo-steps", type=int, help="GRPO steps (default: the toy pair's, 150)")
    parser.add_argument("--grpo-lr", type=float, help="GRPO learning rate (default: the toy pair's, 2e-4)")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("docs/results_training"))
    args = parser.parse_args()

    problems = make_problems("test", args.n_test)
    grpo = {k: v for k, v in (("grpo_steps", args.grpo_steps), ("grpo_lr", args.grpo_lr)) if v is not None}
    results: dict[int, dict] = {}
    for seed in args.seeds:
        for method in args.methods:
            reweight = None if method == "none" else method
            rl, base = pair_paths(seed, reweight=reweight, reweight_c=args.reweight_c, **grpo)
            results.setdefault(seed, {"base": evaluate(base, problems, args.k)})
            r = results[seed]
            r[method] = evaluate(rl, problems, args.k)
            print(f"seed {seed} {method}: {fmt(r[method]['sampled'])} (base {fmt(r['base']['sampled'])})")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"args": {**vars(args), "out": str(args.out)}, "results": results}
    (args.out / "results.json").write_text(json.dumps(record))
    names = ["base", *args.methods]
    lines = [
        f"Per seed: accuracy (%) on {args.n_test} held-out problems ± 95% CI over problems; sampled = avg@{args.k} "
        "at temperature 1.",
        "",
        "| seed | " + " | ".join(f"{n} sampled | {n} greedy" for n in names) + " |",
        "|---" * (1 + 2 * len(names)) + "|",
    ]
    for seed, r in results.items():
        cells = (f"{fmt(r[n]['sampled'])} | {fmt(r[n]['greedy'])}" for n in names)
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", f"Over {len(results)} seeds: mean of the per-seed accuracies ± 95% CI (Student t).", ""]
    lines += ["| model | sampled | greedy | paired Δ sampled vs GRPO | train s (mean) |", "|---|---|---|---|---|"]
    for n in names:
        seed_means = {m: [avg(r[n][m]) for r in results.values()] for m in ("sampled", "greedy")}
        delta = "—"
        if n not in ("base", "none") and "none" in names:
            delta = fmt([avg(r[n]["sampled"]) - avg(r["none"]["sampled"]) for r in results.values()])
        secs = sum(r[n]["train_seconds"] for r in results.values()) / len(results)
        lines.append(f"| {n} | {fmt(seed_means['sampled'])} | {fmt(seed_means['greedy'])} | {delta} | {secs:.0f} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    rl_settings = ToySettings(**grpo)
    title = f"Toy task, held-out split; GRPO {rl_settings.grpo_steps} steps, lr {rl_settings.grpo_lr:g}; lines: seeds"
    plot(results, args.methods, args.out / "accuracy.png", title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
