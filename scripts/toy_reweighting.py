"""Experiment: base vs GRPO vs GRPO with the paper's token reweighting on the toy task, over several seeds.

Trains (or reuses) one base model per seed and one RL model per (seed, method), samples `k` completions per
held-out problem at temperature 1 (and one greedy), and writes JSON, a Markdown table and a PNG plot: per-seed
accuracies, the paired difference reweighted − GRPO with its 95% interval over seeds, and the per-token mechanism
(how much probability each model gives the correct tokens the base model found unlikely). Every model's
evaluation is cached beside it, so a stopped run resumes where it stopped.

    python scripts/toy_reweighting.py --seeds 0 1 2 --methods none direction dominate --out docs/results_training
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_extrapolate.evaluation.grading import avg_at_k, mean_interval, over_seeds
from hf_extrapolate.outputs import cached_json, settings_key
from hf_extrapolate.toy.evaluate import generate
from hf_extrapolate.toy.task import format_prompt, make_problems
from hf_extrapolate.toy.train import ToySettings, pair_paths

BINS = (0.0, 0.1, 0.5, 0.9, 1.0 + 1e-9)  # base probability of the correct token: low ... high
LOW = 0.5  # "low-probability" correct tokens: the base model gives them less than this


def evaluate(model_dir: Path, problems: list[dict], k: int) -> dict:
    """Sampled avg@k and greedy accuracy per problem, training seconds, and the per-token probabilities of the
    correct worked solutions (teacher-forced); cached beside the model, keyed by every setting of the run."""

    def compute() -> dict:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        answers = [p["answer"] for p in problems]
        sampled = avg_at_k(generate(model, tokenizer, problems, k=k, batch_size=100, desc=model_dir.name), answers)
        greedy = avg_at_k(generate(model, tokenizer, problems, do_sample=False, batch_size=100), answers)
        train_seconds = json.loads((model_dir / "toy_settings.json").read_text())["train_seconds"]
        return {"sampled": sampled, "greedy": greedy, "train_seconds": train_seconds,
                "correct_token_p": correct_token_probs(model, tokenizer, problems)}  # fmt: skip

    key = settings_key(1, [p["problem"] for p in problems], k)
    path = model_dir.parent / "results" / f"reweighting-eval-{model_dir.name}-{key}.json"
    return cached_json(path, compute, f"evaluation of {model_dir.name}")


@torch.no_grad()
def correct_token_probs(model, tokenizer, problems: list[dict], batch_size: int = 100) -> list[float]:
    """The model's probability of each token of each problem's correct worked solution, given the prompt and the
    correct tokens before it (all problems' solution tokens, in order)."""
    out: list[float] = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [format_prompt(p["problem"], tokenizer) for p in chunk]
        prompt_lengths = [len(tokenizer(t)["input_ids"]) for t in prompts]
        batch = tokenizer([t + p["solution"] for t, p in zip(prompts, chunk)], return_tensors="pt", padding=True,
                          padding_side="right")  # fmt: skip
        logp = torch.log_softmax(model(**batch).logits[:, :-1].float(), -1)
        p = logp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0].exp()
        for row, n in enumerate(prompt_lengths):
            length = int(batch["attention_mask"][row].sum())
            out += p[row, n - 1 : length - 1].tolist()
    return out


def mechanism(results: dict, methods: list[str]) -> dict:
    """Per seed and method: the mean probability the model gives the correct tokens in each bin of the base
    model's probability, and the mean gain over the base model on the low-probability ones (base p < LOW)."""
    out: dict = {}
    for seed, r in results.items():
        base = torch.tensor(r["base"]["correct_token_p"])
        low = base < LOW
        row: dict = {"low_tokens": int(low.sum()), "tokens": len(base)}
        for name in ["base", *methods]:
            p = torch.tensor(r[name]["correct_token_p"])
            bins = [p[(base >= a) & (base < b)].mean().item() for a, b in itertools.pairwise(BINS)]
            row[name] = {"bins": bins, "low_gain": (p[low] - base[low]).mean().item()}
        out[seed] = row
    return out


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=["none", "direction", "dominate"])
    parser.add_argument("--reweight-c", type=float, default=0.2)
    default = ToySettings()
    parser.add_argument("--grpo-steps", type=int, help=f"GRPO steps (default: the toy pair's, {default.grpo_steps})")
    parser.add_argument("--grpo-lr", type=float, help=f"GRPO lr (default: the toy pair's, {default.grpo_lr:g})")
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
    per_token = mechanism(results, args.methods)
    for r in results.values():
        for v in r.values():
            v.pop("correct_token_p")
    record = {"args": {**vars(args), "out": str(args.out)}, "results": results, "mechanism": per_token}
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
    if "none" in args.methods:
        lines += ["", "Paired by seed: reweighted − GRPO, sampled accuracy (points), per seed and mean ± 95% CI:", ""]
        lines += ["| method | " + " | ".join(f"seed {s}" for s in results) + " | mean ± 95% CI |",
                  "|---" * (len(results) + 2) + "|"]  # fmt: skip
        for n in args.methods:
            if n != "none":
                d = over_seeds({s: avg(r[n]["sampled"]) - avg(r["none"]["sampled"]) for s, r in results.items()})
                cells = " | ".join(f"{100 * v:+.1f}" for v in d["per_seed"].values())
                lines.append(f"| {n} − GRPO | {cells} | {100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f} |")
    labels = [f"[{a:g}, {min(b, 1):g}{')' if b < 1 else ']'}" for a, b in itertools.pairwise(BINS)]
    lines += ["", "Per token, on the correct worked solutions of the held-out problems (teacher-forced): the mean "
              "probability each model gives the correct token, by the base model's probability of it (mean over "
              f"seeds), and the mean gain over the base model on the correct tokens the base model gives p < {LOW:g}:",
              "", "| model | " + " | ".join(f"base p in {b}" for b in labels) + " | gain on low-p tokens |",
              "|---" * (len(labels) + 2) + "|"]  # fmt: skip
    for n in names:
        bins = [avg([m[n]["bins"][i] for m in per_token.values()]) for i in range(len(labels))]
        gain = over_seeds({s: m[n]["low_gain"] for s, m in per_token.items()})
        lines.append(f"| {n} | " + " | ".join(f"{b:.3f}" for b in bins) +
                     f" | {gain['mean']:+.3f} ± {gain['ci95']:.3f} |")  # fmt: skip
    for n in args.methods:
        if n != "none" and "none" in args.methods:
            d = over_seeds({s: m[n]["low_gain"] - m["none"]["low_gain"] for s, m in per_token.items()})
            cells = ", ".join(f"{v:+.3f}" for v in d["per_seed"].values())
            lines += ["", f"Gain on low-p correct tokens, {n} − GRPO, paired by seed: {cells}; mean "
                      f"{d['mean']:+.3f} ± {d['ci95']:.3f} (95% CI over seeds)."]  # fmt: skip
    lowest = {s: m["low_tokens"] for s, m in per_token.items()}
    lines += ["", f"Low-probability correct tokens per seed: {lowest} (of {next(iter(per_token.values()))['tokens']})."]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    rl_settings = ToySettings(**grpo)
    title = f"Toy task, held-out split; GRPO {rl_settings.grpo_steps} steps, lr {rl_settings.grpo_lr:g}; lines: seeds"
    plot(results, args.methods, args.out / "accuracy.png", title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
