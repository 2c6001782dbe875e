"""`hf-extrapolate quickstart`: train (or reuse) the toy pair, then compare base, RL and extrapolation on it.

Every method decodes the held-out split twice: sampled (temperature 1, k samples per problem, avg@k) and
greedy. Extrapolation goes through `DeltaLogpExtrapolation` on the RL model; selective modes get their
sampling settings (temperature 1, top-p 1) inside the processor, and temperature 0 for greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_extrapolate.evaluation.grading import avg_at_k, mean_interval
from hf_extrapolate.outputs import check_output_folder, output_folder
from hf_extrapolate.toy.evaluate import generate

GAMMAS = (0.0, 0.5, 1.0, 2.0)
TAU = -0.3  # the paper's kind of threshold (DAPO-32B: −0.3)


@dataclass
class Method:
    """One decoding method: which model generates, and the processor settings (None: the model alone)."""

    name: str
    model: str  # "base" or "rl"
    settings: dict[str, Any] | None = None
    gamma: float | None = None  # position on the accuracy-vs-γ plot
    family: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def methods(gammas: tuple[float, ...] = GAMMAS, tau: float = TAU) -> list[Method]:
    out = [Method("base", "base"), Method("RL", "rl", gamma=0.0, family="full")]
    out += [Method(f"full γ={g:g}", "rl", {"gamma": g}, g, "full") for g in gammas if g > 0]
    out.append(Method(f"selective replace τ={tau:g}", "rl", {"weights": (0.0, 1.0), "select": "delta_logp",
                                                             "threshold": tau}, 0.0, "selective"))  # fmt: skip
    out += [Method(f"selective γ={g:g} τ={tau:g}", "rl", {"gamma": g, "select": "delta_logp", "threshold": tau}, g,
                   "selective") for g in gammas if g > 0]  # fmt: skip
    return out


def evaluate(method: Method, models: dict, tokenizer: Any, problems: list[dict], samples: int, seed: int) -> None:
    """Fill ``method.results``: sampled avg@k and greedy accuracy with 95% CIs, and (selective) the expected shares
    of tokens resampled and changed."""
    from hf_extrapolate import DeltaLogpExtrapolation

    for mode, k, temperature in (("sampled", samples, 1.0), ("greedy", 1, 0.0)):
        procs = []
        if method.settings is not None:
            selective = "select" in method.settings
            procs = [DeltaLogpExtrapolation(models["base"], tokenizer=tokenizer, **method.settings,
                                            **({"temperature": temperature} if selective else {}))]  # fmt: skip
        completions = generate(models[method.model], tokenizer, problems, k=k, do_sample=k > 1 or temperature > 0,
                               seed=seed, logits_processor=procs, batch_size=200,
                               desc=f"{method.name} ({mode})")  # fmt: skip
        mean, half = mean_interval(avg_at_k(completions, [p["answer"] for p in problems]))
        method.results[mode] = {"accuracy": mean, "ci95": half}
        if procs and procs[0].resample_rate is not None:
            method.results[mode]["resampled"] = procs[0].resample_rate
            method.results[mode]["changed"] = procs[0].changed_rate


def table(ms: list[Method], samples: int) -> str:
    lines = [f"| method | avg@{samples} (sampled, T=1) | greedy | tokens resampled / changed (sampled) |",
             "|---|---|---|---|"]  # fmt: skip
    for m in ms:
        s, g = m.results["sampled"], m.results["greedy"]
        changed = f"{s['resampled']:.1%} / {s['changed']:.1%}" if "changed" in s else (
            "all (reweighted)" if m.settings else "—")  # fmt: skip
        lines.append(f"| {m.name} | {100 * s['accuracy']:.1f} ± {100 * s['ci95']:.1f} | "
                     f"{100 * g['accuracy']:.1f} ± {100 * g['ci95']:.1f} | {changed} |")  # fmt: skip
    return "\n".join(lines)


def plot(ms: list[Method], path: Path, samples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for family, colour in (("full", "tab:blue"), ("selective", "tab:orange")):
        points = sorted((m.gamma, m.results["sampled"]) for m in ms if m.family == family and m.gamma is not None)
        xs = [g for g, _ in points]
        ys = [100 * r["accuracy"] for _, r in points]
        es = [100 * r["ci95"] for _, r in points]
        label = "full extrapolation" if family == "full" else f"selective (Δlog p ≤ {TAU:g}); γ=0: replace"
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colour, label=label)
    base = next(m for m in ms if m.name == "base").results["sampled"]["accuracy"]
    ax.axhline(100 * base, color="grey", ls="--", label="base model")
    ax.set_xlabel("γ")
    ax.set_ylabel(f"accuracy, avg@{samples} (%)")
    ax.set_title("Toy pair: held-out accuracy against γ (95% CI)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from hf_extrapolate import load_pair
    from hf_extrapolate.toy import pair_paths
    from hf_extrapolate.toy.task import make_problems
    from hf_extrapolate.toy.train import no_transformers_bars

    if args.n_problems < 1 or args.samples < 2:
        raise ValueError("--n-problems must be >= 1 and --samples >= 2 (avg@k needs several samples)")
    check_output_folder(args.out, overwrite=args.overwrite)  # before the minutes of training and decoding
    start = time.time()
    rl_dir, base_dir = pair_paths(seed=args.seed)
    with no_transformers_bars():
        rl, base, tokenizer = load_pair(str(rl_dir), str(base_dir), dtype="float32")
    models = {"rl": rl, "base": base}
    problems = make_problems("test", args.n_problems, seed=args.seed)
    ms = methods()
    for m in ms:
        evaluate(m, models, tokenizer, problems, args.samples, args.seed)
    out = Path(args.out)
    text = table(ms, args.samples)
    report = {"rl": str(rl_dir), "base": str(base_dir), "problems": len(problems), "samples": args.samples,
              "seed": args.seed, "seconds": round(time.time() - start, 1), "table": text,
              "methods": [{"name": m.name, "settings": m.settings, **m.results} for m in ms]}  # fmt: skip
    with output_folder(out, overwrite=args.overwrite) as tmp:
        (tmp / "quickstart.json").write_text(json.dumps(report, indent=2))
        plot(ms, tmp / "accuracy_vs_gamma.png", args.samples)
    print(f"\nToy pair ({rl_dir.name}), {len(problems)} held-out problems, 95% CIs over problems:\n\n{text}\n")
    print(f"wrote {out / 'quickstart.json'} and {out / 'accuracy_vs_gamma.png'} in {report['seconds']:.0f} s")
    return 0


DESCRIPTION = """\
Train the toy base/RL pair once (SFT, then GRPO: about 6 minutes on a quiet 2-core machine; cached for every later
run), then score base, RL, full and selective extrapolation on held-out problems (about 1 minute), print the table
and write quickstart.json and accuracy_vs_gamma.png to --out."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train or reuse the toy pair, then compare base, RL and extrapolation",
                       description=DESCRIPTION)  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="toy pair and data seed")
    p.add_argument("--n-problems", type=int, default=100, help="held-out problems")
    p.add_argument("--samples", type=int, default=4, help="samples per problem for avg@k")
    p.add_argument("--out", default="quickstart", help="folder for quickstart.json and accuracy_vs_gamma.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.set_defaults(func=run)
