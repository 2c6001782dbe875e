"""`analyze --seeds`: the identification analysis on the toy pair of each seed, then its claims over seeds.

Each seed's analysis (its own pair, problems and sampling) is the single-seed report of `report.write_report`,
cached as a folder beside the pair: a long multi-seed run that stops is resumed, seed by seed. Over seeds, each
claim is a mean with a 95% Student-t interval (`grading.over_seeds`): the RL gain, the share of replaced tokens
each metric needs to recover 90% of the gap, and the paired differences (other metric − Δlog p) that carry the
claim that Δlog p needs the fewest tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..evaluation.grading import over_seeds
from .report import DIRECTION_TITLES, RECOVERY, _pct, _pyplot
from .token_stats import LABELS

KEY_METRIC = "delta_logp"


def across_seeds(results: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-seed ``analysis.json`` data (each with "reference" and "recovery_shares") over seeds.

    A share that a seed never reached (None) leaves that seed out of the metric's mean; ``reached`` says on how
    many seeds it was reached. A paired difference uses only the seeds where both metrics reached the target.
    """
    seeds = list(results)
    accuracy = {
        name: over_seeds({s: results[s]["reference"][source]["accuracy"] for s in seeds})
        for name, source in (("base", "base"), ("RL", "rl"))
    }
    gain = over_seeds({s: results[s]["reference"]["rl"]["accuracy"] - results[s]["reference"]["base"]["accuracy"]
                       for s in seeds})  # fmt: skip
    directions: dict[str, Any] = {}
    for direction in DIRECTION_TITLES:
        per_metric: dict[str, dict[int, float | None]] = {}
        for s in seeds:
            for metric, share in results[s]["recovery_shares"].get(direction, {}).items():
                per_metric.setdefault(metric, {})[s] = share
        if not per_metric:
            continue
        shares = {}
        for metric, values in per_metric.items():
            reached = {s: v for s, v in values.items() if v is not None}
            shares[metric] = {**(over_seeds(reached) if reached else {"mean": None, "ci95": None}),
                              "per_seed": values, "reached": len(reached), "seeds": len(values)}  # fmt: skip
        differences = {}
        for metric, values in per_metric.items():
            if metric == KEY_METRIC or KEY_METRIC not in per_metric:
                continue
            both = {s: v - per_metric[KEY_METRIC][s] for s, v in values.items()
                    if v is not None and per_metric[KEY_METRIC].get(s) is not None}  # fmt: skip
            if both:
                differences[f"{metric} − {KEY_METRIC}"] = over_seeds(both)
        directions[direction] = {"shares": shares, "differences": differences}
    return {"seeds": seeds, "accuracy": accuracy, "rl_gain": gain, "recovery": directions}


def _interval(row: Mapping[str, Any], sign: str = "", unit: str = "") -> str:
    if row.get("mean") is None:
        return "not reached"
    ci = "" if row["ci95"] != row["ci95"] else f" ± {100 * row['ci95']:.1f}"  # NaN: one seed
    return f"{100 * row['mean']:{sign}.1f}{unit}{ci}"


def seeds_markdown(summary: Mapping[str, Any], command: str) -> str:
    """Per-seed values and means ± 95% intervals over seeds, as Markdown."""
    seeds = summary["seeds"]
    head = "| | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean of {len(seeds)} ± 95% CI |"
    rule = "|---" * (len(seeds) + 2) + "|"
    lines = ["# Δlog p identification over seeds", "", f"Command: `{command}`", "",
             "Accuracy (avg@k, %) of each seed's pair on its own samples:", "", head, rule]  # fmt: skip
    rows = [*summary["accuracy"].items(), ("RL − base", summary["rl_gain"])]
    for name, row in rows:
        sign = "+" if name == "RL − base" else ""
        cells = " | ".join(f"{100 * v:{sign}.1f}" for v in row["per_seed"].values())
        lines.append(f"| {name} | {cells} | {_interval(row, sign)} |")
    for direction, block in summary["recovery"].items():
        lines += ["", f"Share of tokens replaced to {'recover' if direction == 'forward' else 'lose'} {RECOVERY:.0%} "
                  f"of the base–RL gap ({direction}: {DIRECTION_TITLES[direction]}); a mean covers the seeds that "
                  "reached it:", "", head.replace("| |", "| metric |", 1), rule]  # fmt: skip
        for metric, row in block["shares"].items():
            cells = " | ".join(_pct(v) for v in row["per_seed"].values())
            lines.append(f"| {LABELS.get(metric, metric)} | {cells} | {_interval(row, unit='%')} "
                         f"({row['reached']} of {row['seeds']} seeds) |")  # fmt: skip
        for name, row in block["differences"].items():
            metric = name.split(" − ")[0]
            cells = " | ".join(f"{100 * row['per_seed'][s]:+.1f}" if s in row["per_seed"] else "—" for s in seeds)
            lines.append(f"| {metric} − delta_logp (paired) | {cells} | {_interval(row, '+', '%')} "
                         f"({len(row['per_seed'])} seeds) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_recovery(results: Mapping[int, dict[str, Any]], path: Path) -> None:
    """Share of the base–RL gap closed against the share of replaced tokens: a thin line per seed and metric,
    one panel per direction."""
    plt = _pyplot()
    directions = [d for d in DIRECTION_TITLES if any(r["direction"] == d for res in results.values()
                                                     for r in res["replacement"])]  # fmt: skip
    fig, axes = plt.subplots(1, len(directions), figsize=(6.5 * len(directions), 4.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, direction in zip(axes.flat, directions):
        source = "base" if direction == "forward" else "rl"
        metrics = list(dict.fromkeys(r["metric"] for res in results.values() for r in res["replacement"]))
        for i, metric in enumerate(metrics):
            for j, res in enumerate(results.values()):
                ref = {k: v["accuracy"] for k, v in res["reference"].items()}
                start, end = ref[source], ref["rl" if source == "base" else "base"]
                if start == end:
                    continue
                pts = sorted((r["replaced_share"], (r["accuracy"] - start) / (end - start)) for r in res["replacement"]
                             if r["direction"] == direction and r["metric"] == metric)  # fmt: skip
                ax.plot(*zip(*pts), marker=".", lw=1, alpha=0.6, color=colours[i % len(colours)],
                        label=LABELS.get(metric, metric) if j == 0 else None)  # fmt: skip
        ax.axhline(RECOVERY, color="k", ls=":", lw=1, label=f"{RECOVERY:.0%} of the gap")
        ax.set_xscale("log")
        ax.set_xlabel("share of response tokens replaced (expected)")
        ax.set_ylabel("share of the base–RL accuracy gap moved")
        ax.set_title(f"{DIRECTION_TITLES[direction]}\n(one line per seed: {len(results)} seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_seeds_report(results: Mapping[int, dict[str, Any]], out: Path, command: str) -> list[Path]:
    """``seeds.json``, ``seeds.md`` and ``recovery_over_seeds.png`` beside the per-seed folders."""
    summary = across_seeds(results)
    paths = [out / "seeds.json", out / "seeds.md", out / "recovery_over_seeds.png"]
    paths[0].write_text(json.dumps({"command": command, **summary}, indent=2, allow_nan=True) + "\n")
    paths[1].write_text(seeds_markdown(summary, command) + "\n![recovery over seeds](recovery_over_seeds.png)\n")
    plot_recovery(results, paths[2])
    return paths
