"""`hf-extrapolate quickstart`: train (or reuse) the toy pair, then compare base, RL and extrapolation on it.

Every method decodes the held-out split twice: sampled (temperature 1, k samples per problem, avg@k) and
greedy. Extrapolation goes through `DeltaLogpExtrapolation` on the RL model; selective modes get their
sampling settings (temperature 1, top-p 1) inside the processor, and temperature 0 for greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_extrapolate.evaluation.grading import avg_at_k, mean_interval, over_seeds
from hf_extrapolate.outputs import cached_json, check_output_folder, output_folder, settings_key
from hf_extrapolate.toy.evaluate import generate

GAMMAS = (0.0, 0.5, 1.0, 2.0)
TAU = -0.3  # the paper's kind of threshold (DAPO-32B: −0.3)
RESULTS_VERSION = 1  # part of the results cache key: bump it when a change here changes what a seed's run gives


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


def plot(runs: dict[int, list[Method]], path: Path, samples: int) -> None:
    """Sampled accuracy against γ for full and selective extrapolation: one line per seed, and with several seeds
    their mean with its 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    several = len(runs) > 1
    for family, colour in (("full", "tab:blue"), ("selective", "tab:orange")):
        label = "full extrapolation" if family == "full" else f"selective (Δlog p ≤ {TAU:g}); γ=0: replace"
        curves = {}
        for seed, ms in runs.items():
            points = sorted((m.gamma, m.results["sampled"]) for m in ms if m.family == family and m.gamma is not None)
            curves[seed] = [(g, 100 * r["accuracy"], 100 * r["ci95"]) for g, r in points]
        for points in curves.values():
            xs, ys, es = zip(*points, strict=True)
            if several:
                ax.plot(xs, ys, color=colour, alpha=0.35, lw=1)
            else:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colour, label=label)
        if several:
            xs = [g for g, _, _ in next(iter(curves.values()))]
            stats = [mean_interval([points[i][1] for points in curves.values()]) for i in range(len(xs))]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", capsize=3, color=colour,
                        lw=2, label=f"{label}: mean of {len(runs)} seeds (thin: each seed)")  # fmt: skip
    base = mean_interval([100 * _accuracy(ms, "base") for ms in runs.values()])[0]
    ax.axhline(base, color="grey", ls="--", label="base model" + (" (mean)" if several else ""))
    ax.set_xlabel("γ")
    ax.set_ylabel(f"accuracy, avg@{samples} (%)")
    ax.set_title("Toy pair: held-out accuracy against γ (95% CI" + (" over seeds)" if several else ")"))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _accuracy(ms: list[Method], name: str) -> float:
    return next(m for m in ms if m.name == name).results["sampled"]["accuracy"]


def comparisons(ms: list[Method]) -> list[tuple[str, str]]:
    """The paired differences that carry the quickstart's claims: each extrapolation − RL, and each selective γ −
    selective replace (does γ add anything to plain replacement?)."""
    replace = next(m.name for m in ms if m.family == "selective" and m.gamma == 0)
    pairs = [(m.name, "RL") for m in ms if m.settings is not None]
    return pairs + [(m.name, replace) for m in ms if m.family == "selective" and m.gamma]


def across_seeds(runs: dict[int, list[Method]]) -> dict[str, Any]:
    """Sampled accuracy of each method as mean ± 95% Student-t interval over seeds, and each paired difference of
    `comparisons` the same way (per seed first, then over seeds): the RL gain over the base model among them."""
    first = next(iter(runs.values()))
    methods_ = {m.name: over_seeds({s: _accuracy(ms, m.name) for s, ms in runs.items()}) for m in first}
    pairs = [("RL", "base"), *comparisons(first)]
    differences = {f"{a} − {b}": over_seeds({s: _accuracy(ms, a) - _accuracy(ms, b) for s, ms in runs.items()})
                   for a, b in pairs}  # fmt: skip
    return {"seeds": list(runs), "methods": methods_, "differences": differences}


def seeds_table(summary: dict[str, Any], samples: int) -> str:
    """Markdown: per-seed sampled accuracy of each method and of each paired difference, then mean ± 95% CI."""
    seeds = summary["seeds"]
    columns = " | ".join(f"seed {s}" for s in seeds)
    head = f"| sampled avg@{samples} | {columns} | mean of {len(seeds)} ± 95% CI |"
    lines = [head, "|---" * (len(seeds) + 2) + "|"]
    for section in ("methods", "differences"):
        for name, row in summary[section].items():
            cells = " | ".join(f"{100 * v:+.1f}" if section == "differences" else f"{100 * v:.1f}"
                               for v in row["per_seed"].values())  # fmt: skip
            sign = "+" if section == "differences" else ""
            lines.append(f"| {name} | {cells} | {100 * row['mean']:{sign}.1f} ± {100 * row['ci95']:.1f} |")
    return "\n".join(lines)


def seed_results(seed: int, args: argparse.Namespace) -> tuple[list[Method], dict[str, Any]]:
    """One seed's methods, evaluated; reused from the results cache beside the pair when this exact run (pair,
    problems, samples, methods) is already done there, so that a long multi-seed run resumes where it stopped."""
    from hf_extrapolate import load_pair
    from hf_extrapolate.toy import pair_paths
    from hf_extrapolate.toy.task import make_problems
    from hf_extrapolate.toy.train import no_transformers_bars

    rl_dir, base_dir = pair_paths(seed=seed)
    ms = methods()
    key = settings_key(RESULTS_VERSION, args.n_problems, args.samples, seed, [(m.name, m.settings) for m in ms])
    info = {"seed": seed, "rl": str(rl_dir), "base": str(base_dir)}

    def compute() -> dict[str, Any]:
        with no_transformers_bars():
            rl, base, tokenizer = load_pair(str(rl_dir), str(base_dir), dtype="float32")
        models = {"rl": rl, "base": base}
        problems = make_problems("test", args.n_problems, seed=seed)
        for m in ms:
            evaluate(m, models, tokenizer, problems, args.samples, seed)
        return {**info, "results": {m.name: m.results for m in ms}}

    path = rl_dir.parent / "results" / f"quickstart-{rl_dir.name}-{key}.json"
    done = cached_json(path, compute, f"quickstart of seed {seed}")
    for m in ms:
        m.results = done["results"][m.name]
    return ms, info


def run(args: argparse.Namespace) -> int:
    if args.n_problems < 1 or args.samples < 2:
        raise ValueError("--n-problems must be >= 1 and --samples >= 2 (avg@k needs several samples)")
    seeds = list(dict.fromkeys(args.seeds))
    check_output_folder(args.out, overwrite=args.overwrite)  # before the minutes of training and decoding
    start = time.time()
    print(f"hf-extrapolate quickstart: {len(methods())} decoding methods on {args.n_problems} held-out problems "
          f"({args.samples} samples and a greedy pass each) for {len(seeds)} toy pair(s) (seeds "
          f"{' '.join(map(str, seeds))}); under a minute per seed on a quiet 2-core machine once its pair is trained; "
          f"results to {Path(args.out).absolute()}", file=sys.stderr, flush=True)  # fmt: skip
    runs, infos = {}, []
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            print(f"hf-extrapolate quickstart: seed {seed} ({i + 1} of {len(seeds)})", file=sys.stderr, flush=True)
        runs[seed], info = seed_results(seed, args)
        done = [{"name": m.name, "settings": m.settings, **m.results} for m in runs[seed]]
        infos.append({**info, "table": table(runs[seed], args.samples), "methods": done})
    out = Path(args.out)
    report: dict[str, Any] = {"problems": args.n_problems, "samples": args.samples, "seeds": infos}
    texts = [f"Toy pair ({Path(i['rl']).name}, seed {i['seed']}), {args.n_problems} held-out problems, 95% CIs over "
             f"problems:\n\n{i['table']}" for i in infos]  # fmt: skip
    if len(seeds) > 1:
        report["across_seeds"] = across_seeds(runs)
        texts.append(f"Over {len(seeds)} seeds (95% Student-t intervals over seeds; differences paired by seed):\n\n"
                     + seeds_table(report["across_seeds"], args.samples))  # fmt: skip
    report["seconds"] = round(time.time() - start, 1)
    with output_folder(out, overwrite=args.overwrite) as tmp:
        (tmp / "quickstart.json").write_text(json.dumps(report, indent=2))
        plot(runs, tmp / "accuracy_vs_gamma.png", args.samples)
    print("\n" + "\n\n".join(texts) + "\n")
    print(f"wrote {out / 'quickstart.json'} and {out / 'accuracy_vs_gamma.png'} in {report['seconds']:.0f} s")
    return 0


DESCRIPTION = """\
Train the toy base/RL pair once (SFT, then GRPO: about 9 minutes on a quiet 2-core machine; cached for every later
run), then score base, RL, full and selective extrapolation on held-out problems (about 1 minute), print the table
and write quickstart.json and accuracy_vs_gamma.png to --out."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train or reuse the toy pair, then compare base, RL and extrapolation",
                       description=DESCRIPTION)  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="toy pairs (and test problems) to run, one per seed; several give means over seeds")
    p.add_argument("--seed", type=lambda text: [int(text)], dest="seeds", help="one seed: the same as --seeds SEED")
    p.add_argument("--n-problems", type=int, default=100, help="held-out problems")
    p.add_argument("--samples", type=int, default=4, help="samples per problem for avg@k")
    p.add_argument("--out", default="quickstart", help="folder for quickstart.json and accuracy_vs_gamma.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.set_defaults(func=run)
