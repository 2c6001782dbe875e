"""Files of an analysis: JSON, raw per-token values, PNG plots (matplotlib, Agg) and a markdown summary."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .experiment import PROPOSER_SOURCE
from .token_stats import LABELS, METRICS

RECOVERY = 0.9  # the summary reports the share of replaced tokens that closes this much of the accuracy gap
SOURCE_LABELS = {"base": "base-generated", "rl": "RL-generated"}
DIRECTION_TITLES = {
    "forward": "base generates, flagged tokens resampled from RL",
    "reverse": "RL generates, flagged tokens resampled from base",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def share_to_reach(points: Sequence[tuple[float, float]], start: float, target: float) -> float | None:
    """The smallest share of replaced tokens at which the accuracy curve, starting at ``(0, start)`` and
    linearly interpolated through ``points`` (share, accuracy), reaches ``target``; None if it never does."""
    rising = target >= start
    reached = (lambda a: a >= target) if rising else (lambda a: a <= target)
    curve = [(0.0, start), *sorted(points)]
    for (s0, a0), (s1, a1) in itertools.pairwise(curve):
        if reached(a0):
            return s0
        if reached(a1):
            return s0 + (target - a0) * (s1 - s0) / (a1 - a0)
    return None


def recovery_shares(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per direction and metric, the share of replaced tokens that moves the accuracy ``RECOVERY`` of the way
    from the proposer's own accuracy to the other model's (None: not reached; direction absent: no gap)."""
    ref = {k: v["accuracy"] for k, v in result["reference"].items()}
    out: dict[str, dict[str, float | None]] = {}
    for direction, source in PROPOSER_SOURCE.items():
        start, end = ref[source], ref["rl" if source == "base" else "base"]
        rows = [r for r in result["replacement"] if r["direction"] == direction]
        if not rows or start == end:
            continue
        target = start + RECOVERY * (end - start)
        out[direction] = {
            metric: share_to_reach(
                [(r["replaced_share"], r["accuracy"]) for r in rows if r["metric"] == metric], start, target
            )
            for metric in dict.fromkeys(r["metric"] for r in rows)
        }
    return out


def plot_distributions(result: dict[str, Any], path: Path) -> None:
    """One panel per metric: histograms on base-generated and RL-generated response tokens (log counts)."""
    plt = _pyplot()
    tokens = result["tokens"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, metric in zip(axes.flat, METRICS):
        both = np.concatenate([tokens[s][metric] for s in SOURCE_LABELS])
        if len(both) == 0:
            ax.set_axis_off()
            continue
        low, high = np.quantile(both, [0.001, 0.999])
        bins = np.linspace(low, high if high > low else low + 1e-6, 60)
        for source, label in SOURCE_LABELS.items():
            values = np.clip(tokens[source][metric], bins[0], bins[-1])
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5, label=label)
        ax.set_yscale("log")
        ax.set_title(f"{LABELS[metric]}\nKS distance {result['distributions'][metric]['ks']:.3f}", fontsize=10)
    axes.flat[0].legend(fontsize=9)
    fig.suptitle("Per-token statistics of both models on each model's own responses (density, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replacement(result: dict[str, Any], path: Path) -> None:
    """Accuracy against the expected share of replaced tokens, one line per metric, one panel per direction."""
    plt = _pyplot()
    directions = list(dict.fromkeys(r["direction"] for r in result["replacement"]))
    fig, axes = plt.subplots(1, len(directions), figsize=(6.5 * len(directions), 4.8), squeeze=False)
    ref = result["reference"]
    for ax, direction in zip(axes.flat, directions):
        rows = [r for r in result["replacement"] if r["direction"] == direction]
        for metric in dict.fromkeys(r["metric"] for r in rows):
            pts = sorted((r["replaced_share"], r["accuracy"], r["stderr"]) for r in rows if r["metric"] == metric)
            x, y, err = (np.array(v) for v in zip(*pts))
            ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=2, label=LABELS[metric])
        for source, name, style in (("base", "base", ":"), ("rl", "RL", "--")):
            ax.axhline(ref[source]["accuracy"], color="k", linestyle=style, label=f"{name} alone")
        ax.set_xscale("log")
        ax.set_xlabel("share of response tokens replaced (expected)")
        ax.set_ylabel("accuracy (avg@k)")
        ax.set_title(DIRECTION_TITLES[direction], fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "not reached" if x is None else f"{100 * x:.1f}%"


def summary_markdown(result: dict[str, Any], command: str, images: dict[str, str]) -> str:
    """A short report: settings, each model's accuracy, the distribution shift, and the replacement curves."""
    s, ref = result["settings"], result["reference"]
    lines = [
        "# Δlog p identification analysis",
        "",
        f"Command: `{command}`",
        "",
        f"{s['problems']} problems × {s['samples']} samples, temperature {s['temperature']}, top-p {s['top_p']}, "
        f"at most {s['max_new_tokens']} new tokens, seed {s['seed']}.",
        "",
        f"Accuracy (avg@{s['samples']}, ± standard error over problems): base "
        f"{ref['base']['accuracy']:.3f} ± {ref['base']['stderr']:.3f}, RL {ref['rl']['accuracy']:.3f} ± "
        f"{ref['rl']['stderr']:.3f}.",
        "",
        "## Distributions on base- and RL-generated responses",
        "",
        f"![distributions]({images['distributions']})",
        "",
        "| metric | mean (base-gen.) | mean (RL-gen.) | median (base-gen.) | median (RL-gen.) | KS distance |",
        "|---|---|---|---|---|---|",
    ]
    for metric, d in result["distributions"].items():
        b, r = d["base_generated"], d["rl_generated"]
        if b["n"] and r["n"]:
            lines.append(
                f"| {LABELS[metric]} | {b['mean']:.4f} | {r['mean']:.4f} | {b['q50']:.4f} | {r['q50']:.4f} | "
                f"{d['ks']:.3f} |"
            )
    lines += [
        "",
        "## Token replacement",
        "",
        "Thresholds are set so each metric flags about the target share of the proposer's own tokens; the x axis "
        "is the measured expected share of response tokens that were resampled (mean flag probability over "
        "emitted tokens up to EOS). A resampled token may coincide with the original one.",
        "",
        f"![replacement]({images['replacement']})",
        "",
    ]
    recovery = recovery_shares(result)
    for direction, shares in recovery.items():
        verb = "recover" if direction == "forward" else "lose"
        lines += [
            f"Share of tokens replaced to {verb} {RECOVERY:.0%} of the base–RL accuracy gap ({direction}: "
            f"{DIRECTION_TITLES[direction]}):",
            "",
            "| metric | share replaced |",
            "|---|---|",
            *(f"| {LABELS[m]} | {_pct(v)} |" for m, v in shares.items()),
            "",
        ]
    if not recovery:
        lines += ["The two models have the same accuracy here, so there is no gap to recover.", ""]
    lines += [
        "| direction | metric | τ | target share | replaced share | accuracy ± s.e. |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["replacement"]:
        lines.append(
            f"| {r['direction']} | {r['metric']} | {r['threshold']:.4g} | {_pct(r['target_share'])} | "
            f"{_pct(r['replaced_share'])} | {r['accuracy']:.3f} ± {r['stderr']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Write ``analysis.json``, ``tokens.npz``, ``distributions.png``, ``replacement.png`` and ``summary.md``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("analysis.json", "tokens.npz", "distributions.png", "replacement.png")}
    data = {k: v for k, v in result.items() if k != "tokens"}
    data["recovery_shares"] = recovery_shares(result)
    paths["analysis.json"].write_text(json.dumps({"command": command, **data}, indent=2, allow_nan=True) + "\n")
    np.savez_compressed(
        paths["tokens.npz"],
        **{f"{s}_generated/{m}": v for s, stats in result["tokens"].items() for m, v in stats.items()},
    )
    plot_distributions(result, paths["distributions.png"])
    plot_replacement(result, paths["replacement.png"])
    paths["summary.md"] = out / "summary.md"
    images = {"distributions": "distributions.png", "replacement": "replacement.png"}
    paths["summary.md"].write_text(summary_markdown(result, command, images))
    return list(paths.values())
