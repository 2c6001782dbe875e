"""`hf-extrapolate bench`: decoding speed and peak memory of extrapolation, against the RL model alone.

Every measurement runs in a fresh subprocess that builds a same-size random-weight Llama pair, warms up,
times one `generate` call forced to emit exactly N new tokens, and reads its peak memory (``VmHWM`` from
``/proc/self/status`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). Repeats interleave the variants
(A, B, C, A, B, C, ...) so that load on a shared machine hits them alike; the tables give medians.

One file for one command: the worker, the grid, the table and its targets read together (the vLLM worker alone
lives in `hf_extrapolate.vllm.bench`, so that this module never imports vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    PreTrainedModel,
    StoppingCriteria,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)
from transformers import __version__ as transformers_version

from .configuration import ExtrapolationConfig
from .extrapolation import combine
from .loading import quantization
from .modeling import ExtrapolatedForCausalLM
from .outputs import check_output_folder, output_folder
from .processor import DeltaLogpExtrapolation, generate_arguments

VARIANTS: dict[str, str] = {
    "rl": "the RL model alone",
    "processor": "DeltaLogpExtrapolation in the RL model's generate, full mode",
    "wrapper": "ExtrapolatedForCausalLM.generate, full mode, one forward after the other (concurrent=False)",
    "concurrent": "ExtrapolatedForCausalLM.generate, full mode, the base forward beside the RL one (concurrent=True)",
    "cfg": "transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor, guidance 1 + γ over the base model (peer)",
    "selective": "DeltaLogpExtrapolation, selective mode (resample where Δlog p ≤ −0.3)",
    "nocache": "the reference code's way: the base model re-reads the whole prefix at every step",
    "vllm-rl": "the RL model alone in vLLM (load_format=dummy: random weights)",
    "vllm-pair": "the pair as one vLLM model (hf_extrapolate.vllm), full mode",
}
EXTRAPOLATING = ("processor", "wrapper", "concurrent", "selective")
VLLM_VARIANTS = ("vllm-rl", "vllm-pair")
# Llama shapes: "cpu" (49M parameters) is the same-size pair the CPU targets are set on, with grouped-query
# attention (4 query heads per key/value head) like the paper's Qwen2.5 models and Llama 3; "0.5b"/"1.5b"
# (Qwen2-like) are for GPUs; "tiny" is for smoke tests of the benchmark itself
PRESETS: dict[str, dict[str, int]] = {
    "cpu": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=32000),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    # 124M parameters, head_dim 64 (the CPU attention backend of vLLM needs head_dim >= 32): `--backend vllm`
    "vllm": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000),
    # 5M parameters: a forward cheap enough that the per-step work around it shows (as small models on a GPU)
    "5m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=1, vocab_size=4096),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}  # fmt: skip
# each backend's grid: what `bench` measures where the command line does not say
GRIDS: dict[str, dict[str, Any]] = {
    "hf": dict(lengths=[(32, 256), (32, 1024)], batches=[1, 8], repeats=3, model="cpu",
               variants=[v for v in VARIANTS if v not in VLLM_VARIANTS]),
    "vllm": dict(lengths=[(32, 256)], batches=[16, 64], repeats=1, model="vllm",
                 variants=["vllm-rl", "vllm-pair", "processor"]),
}  # fmt: skip
GAMMA, THRESHOLD = 0.5, -0.3
PAD_ID = 0
MIB = 2**20


# -- one measurement, in its own process -----------------------------------------------------------------
class NoCacheExtrapolation(LogitsProcessor):
    """Full-mode extrapolation whose base model re-reads the whole (unpadded) prefix at every step."""

    def __init__(self, base_model: PreTrainedModel):
        self.base_model, self.config = base_model, ExtrapolationConfig(gamma=GAMMA)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        base = self.base_model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]
        return combine(scores, base.float().to(scores.device), self.config)[0]


class StepClock(StoppingCriteria):
    """Stamps the end of every decoding step (wall and CPU clocks); stops generating after ``budget`` seconds."""

    def __init__(self, budget: float):
        self.budget = budget
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        stop = self.wall[-1] - self.wall[0] > self.budget
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def lower_bound(stamps: list[float], steps: int) -> float:
    """Time ``steps`` decoding steps take at least, from the stamps of the first ones, when no step is cheaper
    than an earlier one (true of the no-cache baseline, which re-reads a longer prefix each step): the time so
    far, plus every missing step at the mean cost of the last tenth of the measured steps."""
    done = len(stamps) - 1
    recent = max(1, done // 10)
    rate = (stamps[-1] - stamps[-1 - recent]) / recent
    return stamps[-1] - stamps[0] + max(0, steps - done) * rate


def preset_config(preset: str) -> LlamaConfig:
    """The Llama config of a preset (both models of a benchmark pair have it)."""
    return LlamaConfig(
        **PRESETS[preset], max_position_embeddings=4096, tie_word_embeddings=False,
        pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


def _build(preset: str, seed: int, dtype: torch.dtype, device: str, load_in_4bit: bool) -> PreTrainedModel:
    """A random-weight Llama of the preset's shape; the seed alone tells the RL model from the base model."""
    config = preset_config(preset)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 1.5B model is not built in float32 on the CPU first
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if not load_in_4bit:
        return model.eval()
    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantizes while loading: go through a saved copy
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(
            tmp, dtype=dtype, device_map=device, quantization_config=quantization(load_in_4bit=True)
        ).eval()


def random_prompts(vocab_size: int, batch: int, length: int) -> torch.Tensor:
    """The benchmark's prompts: ``[batch, length]`` token ids, the same for every variant (seed 0, no special ids)."""
    return torch.randint(3, vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))


def measurement(
    seconds: float, cpu_seconds: float, startup: float, tokens: int, peak: float, expected: float
) -> dict[str, Any]:
    """One worker's result, as `run` reads it (both the transformers and the vLLM workers return it)."""
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "startup_seconds": startup, "tokens": tokens,
            "peak_bytes": peak, "expected_bytes": expected}  # fmt: skip


def _cache_bytes(model: PreTrainedModel, batch: int, length: int) -> int:
    """Bytes of a full KV cache of ``length`` positions (keys and values of every layer)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * batch * c.num_key_value_heads * head_dim * length * model.dtype.itemsize


def _rss(field: str) -> int:
    """A memory field of this process from ``/proc/self/status``, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start a new peak-memory window (``VmHWM`` is reset by writing 5 to ``clear_refs``, Linux ≥ 4.0)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    Path("/proc/self/clear_refs").write_text("5")


def _memory(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else _rss("VmRSS")


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else _rss("VmHWM")


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _warm_runtime(device: str) -> None:
    """Initialise torch's and transformers' lazy state (thread pools, imported modules) on a tiny model, so that
    the memory baseline taken after it counts only the benchmark's models and what decoding with them allocates."""
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=PAD_ID)  # fmt: skip
    tiny = LlamaForCausalLM(config).to(device).eval()
    ids = torch.ones(1, 2, dtype=torch.long, device=device)
    tiny.generate(ids, logits_processor=[DeltaLogpExtrapolation(tiny, GAMMA)], max_new_tokens=2, pad_token_id=PAD_ID)


def measure(
    variant: str, prompt: int, new: int, batch: int, *, preset: str = "cpu", device: str = "cpu",
    dtype: str = "float32", load_in_4bit: bool = False, threads: int | None = None, top_p: float = 1.0,
    nocache_budget: float | None = None, static_cache: bool = False, compile: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Time one `generate` call of ``variant`` emitting exactly ``new`` tokens per row; return seconds and memory.

    Sampling is at temperature 1 with ``top_p``, which selective mode applies inside the processor (as the paper's
    two-stage sampler does) and every other variant in `generate`. The no-cache variant stops after
    ``nocache_budget`` seconds; its times are then `lower_bound`s. ``static_cache`` decodes with
    ``cache_implementation="static"`` (every cache generate makes; the processor's own base cache stays dynamic),
    ``compile`` wraps each model's forward in ``torch.compile`` (and turns generate's own automatic compile off, so
    every variant is compiled the same way).
    """
    if variant in VLLM_VARIANTS:
        from .vllm.bench import measure_vllm

        return measure_vllm(variant, prompt, new, batch, preset=preset, device=device, dtype=dtype, top_p=top_p)
    if threads:
        torch.set_num_threads(threads)
    _warm_runtime(device)
    start_memory = _memory(device)
    began = time.perf_counter()
    models = [
        _build(preset, seed, getattr(torch, dtype), device, load_in_4bit)
        for seed in ((0,) if variant == "rl" else (0, 1))
    ]
    if compile:
        for m in models:
            m.forward = torch.compile(m.forward)
    rl, base = models[0], models[-1]
    model, processors = rl, []
    if variant in ("wrapper", "concurrent"):  # concurrent: torch's threads split in two (`thread_plan`)
        model = ExtrapolatedForCausalLM(rl, base, GAMMA, concurrent=variant == "concurrent")
    elif variant == "processor":
        processors = [DeltaLogpExtrapolation(base, GAMMA)]
    elif variant == "selective":
        processors = [DeltaLogpExtrapolation(base, GAMMA, select="delta_logp", threshold=THRESHOLD, top_p=top_p)]
    elif variant == "nocache":
        processors = [NoCacheExtrapolation(base)]
    elif variant not in ("rl", "cfg"):
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    ids = random_prompts(rl.config.vocab_size, batch, prompt).to(device)
    startup = time.perf_counter() - began

    def generate(n: int, stopping_criteria: list[StoppingCriteria] | None = None) -> torch.Tensor:
        torch.manual_seed(0)
        if variant == "cfg":  # a fresh processor per call: it keeps its own cache of the base model
            processors[:] = [UnbatchedClassifierFreeGuidanceLogitsProcessor(1 + GAMMA, base, unconditional_ids=ids)]
        return model.generate(**generate_arguments(
            model, processors, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
            min_new_tokens=n, stopping_criteria=stopping_criteria, do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0 if variant == "selective" else top_p, pad_token_id=PAD_ID,
            **({"cache_implementation": "static"} if static_cache else {}), disable_compile=True,
        ))  # fmt: skip

    generate(new if compile else 4)  # warm-up: kernels and allocator (compiled graphs: the timed shapes)
    _reset_peak()
    _synchronize(device)
    began, began_cpu = time.perf_counter(), time.process_time()
    clock = StepClock(nocache_budget) if variant == "nocache" and nocache_budget else None
    out = generate(new, [clock] if clock else None)
    _synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    tokens = out.shape[1] - prompt
    if tokens < new:
        if clock is None:
            raise RuntimeError(f"{variant}: generate made {tokens} new tokens, not {new}")
        seconds, cpu_seconds = lower_bound(clock.wall, new), lower_bound(clock.cpu, new)
    cached = 0 if variant == "nocache" else len(models)  # models that keep a cache of prompt + new − 1 positions
    expected = sum(m.get_memory_footprint() for m in models) + cached * _cache_bytes(rl, batch, prompt + tokens - 1)
    return measurement(seconds, cpu_seconds, startup, tokens, _peak(device) - start_memory, expected)


# -- the whole benchmark -----------------------------------------------------------------------------------
def machine(device: str, threads: int | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers_version,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _run_one(case: dict[str, Any]) -> dict[str, Any]:
    """`measure` in a fresh Python process (so each peak-memory reading is its own)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hf_extrapolate.bench", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {case}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    lengths: list[tuple[int, int]], batches: list[int], variants: list[str], repeats: int, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Measure every (length, batch, variant) ``repeats`` times, interleaving variants; one row per cell."""
    cells = [(p, n, b) for p, n in lengths for b in batches]
    samples: dict[tuple, list[dict[str, Any]]] = {(*c, v): [] for c in cells for v in variants}
    began = time.perf_counter()
    for r in range(repeats):
        for p, n, b in cells if r % 2 == 0 else cells[::-1]:  # a drift in load then hits short and long runs alike
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:  # rotate the order each repeat
                result = _run_one(dict(settings, variant=v, prompt=p, new=n, batch=b))
                samples[(p, n, b, v)].append(result)
                print(f"  repeat {r + 1}/{repeats} {p}/{n} batch {b} {v}: {result['seconds']:.2f} s", file=sys.stderr)
        if r == 0 and repeats > 1:
            took = time.perf_counter() - began
            print(
                f"first repeat took {took / 60:.1f} min; about {took * (repeats - 1) / 60:.0f} min to go",
                file=sys.stderr,
            )
    rows = []
    for (p, n, b, v), runs in samples.items():
        seconds = statistics.median(s["seconds"] for s in runs)
        rows.append({
            "prompt": p, "new": n, "batch": b, "variant": v, "seconds": seconds, "runs": [s["seconds"] for s in runs],
            "cpu_seconds": statistics.median(s["cpu_seconds"] for s in runs), "tokens_per_s": b * n / seconds,
            "lower_bound": any(s["tokens"] < n for s in runs), "tokens": min(s["tokens"] for s in runs),
            "peak_bytes": statistics.median(s["peak_bytes"] for s in runs), "expected_bytes": runs[0]["expected_bytes"],
            "startup_seconds": statistics.median(s["startup_seconds"] for s in runs),
        })  # fmt: skip
    rl = {(r["prompt"], r["new"], r["batch"]): r for r in rows if r["variant"] == "rl"}
    for row in rows:
        ref = rl.get((row["prompt"], row["new"], row["batch"]))
        row["vs_rl"] = row["seconds"] / ref["seconds"] if ref else None
        row["cpu_vs_rl"] = row["cpu_seconds"] / ref["cpu_seconds"] if ref else None
        # what extrapolation adds to the RL model alone, against what it must add: the base model and its cache
        row["added_vs_base"] = (
            (row["peak_bytes"] - ref["peak_bytes"]) / (row["expected_bytes"] - ref["expected_bytes"])
            if ref and row["variant"] in EXTRAPOLATING
            else None
        )
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the issue's targets against whatever cells were measured."""
    at = {(r["prompt"], r["new"], r["batch"], r["variant"]): r for r in rows}
    out = []

    def check(name: str, value: float, limit: float, at_most: bool = True, cpu: float | None = None) -> None:
        """One target; ``cpu`` is the same ratio of CPU times, shown beside (met or not is judged on ``value``)."""
        met = value <= limit if at_most else value >= limit
        out.append({"target": name, "value": round(value, 3), "cpu_value": cpu and round(cpu, 3), "limit": limit,
                    "met": met})  # fmt: skip

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        return {"value": a["seconds"] / b["seconds"], "cpu": a["cpu_seconds"] / b["cpu_seconds"]}

    for (p, n, b, v), row in at.items():
        if n == 256 and v in EXTRAPOLATING and (p, n, b, "rl") in at:
            limit = {"selective": 2.3, "concurrent": 1.25}.get(v, 2.2)
            check(f"{v} time / RL time, {p}/{n}, batch {b}", limit=limit, **ratio(row, at[(p, n, b, "rl")]))
        if v != "nocache" and n == 1024 and (p, 256, b, v) in at:
            check(f"{v} time {p}/1024 / time {p}/256, batch {b}", limit=4.4, **ratio(row, at[(p, 256, b, v)]))
        if v == "nocache" and n == 1024 and (p, n, b, "processor") in at:
            bound = " (lower bound)" if row["lower_bound"] else ""
            name = f"no-cache time / processor time{bound}, {p}/{n}, batch {b}"
            check(name, limit=5.0, at_most=False, **ratio(row, at[(p, n, b, "processor")]))
        if v in EXTRAPOLATING:
            check(f"{v} peak / (models + caches), {p}/{n}, batch {b}", row["peak_bytes"] / row["expected_bytes"], 1.1)
        if v == "vllm-pair" and (p, n, b, "vllm-rl") in at:
            name = f"vllm-pair time / vllm-rl time, {p}/{n}, batch {b}"
            check(name, limit=2.1, **ratio(row, at[(p, n, b, "vllm-rl")]))
        if v == "vllm-pair" and (p, n, b, "processor") in at:
            name = f"processor time / vllm-pair time, {p}/{n}, batch {b}"
            check(name, limit=3.0, at_most=False, **ratio(at[(p, n, b, "processor")], row))
    return out


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    """The results table, the targets table, and what they were measured on."""
    lines = [
        f"Command: `{command}`  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| prompt/new | batch | variant | tokens/s | time (s) | × RL | × RL, CPU time | startup (s) | peak MiB "
        "| models+caches MiB | peak / (models+caches) | added / (base+cache) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio = lambda x: f"{x:.2f}" if x is not None else "–"  # noqa: E731
    for r in rows:
        bound = "≥ " if r["lower_bound"] else ""
        lines.append(
            f"| {r['prompt']}/{r['new']} | {r['batch']} | {r['variant']} | {'≤ ' if bound else ''}"
            f"{r['tokens_per_s']:.1f} | {bound}{r['seconds']:.2f} | {bound}{ratio(r['vs_rl'])} | "
            f"{bound}{ratio(r['cpu_vs_rl'])} | {r['startup_seconds']:.1f} | {r['peak_bytes'] / MIB:.0f} | "
            f"{r['expected_bytes'] / MIB:.0f} | "
            f"{r['peak_bytes'] / r['expected_bytes']:.2f} | {ratio(r['added_vs_base'])} |"
        )
    if any(r["lower_bound"] for r in rows):
        lines += ["", "≥: the no-cache run hit --nocache-budget after "
                  + ", ".join(f"{r['tokens']} of {r['new']} tokens ({r['prompt']}/{r['new']}, batch {r['batch']})"
                              for r in rows if r["lower_bound"])
                  + "; no step costs less than an earlier one, so the time so far plus each missing step at the "
                  "recent cost per step is a lower bound."]  # fmt: skip
    if checks:
        lines += ["", "| target | value | same, CPU time | limit | met |", "|---|---|---|---|---|"]
        lines += [f"| {c['target']} | {c['value']:.2f} | {ratio(c['cpu_value'])} | {c['limit']} | "
                  f"{'yes' if c['met'] else '**no**'} |" for c in checks]  # fmt: skip
    return "\n".join(lines) + "\n"


def _lengths(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in item.split("/")) for item in text.split(",")]  # type: ignore[misc]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"lengths are PROMPT/NEW pairs separated by commas, got {text!r}") from err


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU")
    if args.load_in_4bit and args.device != "cuda":
        raise ValueError("--load-in-4bit needs --device cuda (bitsandbytes)")
    if args.out:  # before the measurements, which take minutes
        check_output_folder(args.out, overwrite=args.overwrite)
    for name, value in GRIDS[args.backend].items():  # what the command line leaves out
        if getattr(args, name) is None:
            setattr(args, name, value)
    if any(v in VLLM_VARIANTS for v in args.variants):
        from .vllm import import_vllm

        import_vllm()  # one line now if vLLM is missing, not a worker's traceback later
    if args.quick:
        args.lengths, args.repeats = [(32, 64)], 1
    settings = dict(preset=args.model, device=args.device, dtype=args.dtype, load_in_4bit=args.load_in_4bit,
                    threads=args.threads, top_p=args.top_p, nocache_budget=args.nocache_budget,
                    static_cache=args.static_cache, compile=args.compile)  # fmt: skip
    command = "hf-extrapolate " + shlex.join(sys.argv[sys.argv.index("bench") :] if "bench" in sys.argv else ["bench"])
    info = machine(args.device, args.threads)
    print(f"{command}\n{json.dumps(info)}", file=sys.stderr)
    warning = few_repeats_warning(args.repeats)
    if warning:
        print(warning, file=sys.stderr)
    rows = run(args.lengths, args.batches, args.variants, args.repeats, settings)
    checks = targets(rows)
    text = markdown(rows, checks, info, command)
    if warning:
        text = f"> {warning}\n\n{text}"
    print(text)
    if args.out:
        report = {"command": command, "machine": info, "settings": settings, "variants": VARIANTS,
                  "results": rows, "targets": checks}  # fmt: skip
        with output_folder(args.out, overwrite=args.overwrite) as tmp:
            (tmp / "bench.md").write_text(text)
            (tmp / "bench.json").write_text(json.dumps(report, indent=2))
    return 0


MIN_REPEATS = 3  # fewer interleaved repeats per cell give ratios that a loaded machine can turn upside down


def few_repeats_warning(repeats: int) -> str | None:
    """The line printed (and written above the table) when a run has too few repeats for its ratios to mean much."""
    if repeats >= MIN_REPEATS:
        return None
    return (f"WARNING: {repeats} repeat(s) per cell: ratios from fewer than {MIN_REPEATS} interleaved repeats are "
            f"noise on a machine doing other work (one run printed the pair faster than one model); use --repeats "
            f"{MIN_REPEATS} or more for figures")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="decoding speed and peak memory against the RL model alone",
                              description=__doc__)  # fmt: skip
    p.add_argument("--lengths", type=_lengths, help="PROMPT/NEW,... (32/256,32/1024)")
    p.add_argument("--batches", type=_ints, help="batch sizes, comma-separated (1,8)")
    p.add_argument("--variants", type=_names, help=f"subset of {','.join(VARIANTS)} (all but the vllm ones)")
    p.add_argument("--repeats", type=int, help="runs per cell; medians are reported (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32/64 only, one repeat (ratios not to be read)")
    p.add_argument("--backend", choices=list(GRIDS), default="hf",
                   help="the grid when not given: vllm = vllm-rl,vllm-pair,processor, 124M 'vllm' preset, 32/256, "
                   "batches 16,64, 1 repeat")  # fmt: skip
    p.add_argument("--model", choices=list(PRESETS), help="random-weight Llama shape (cpu)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the workers run")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weights' dtype")
    p.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit weights (CUDA only)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling top-p (1.0; the paper samples at 0.7)")
    p.add_argument("--nocache-budget", type=float, default=120.0,
                   help="seconds after which a no-cache run stops; its time is then a lower bound (120)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (torch's default)")
    p.add_argument("--static-cache", action="store_true", help="cache_implementation='static' in every generate")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each model's forward (with --static-cache: fixed shapes; for GPUs)")  # fmt: skip
    p.add_argument("--out", help="folder for bench.md and bench.json")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.set_defaults(func=main)


if __name__ == "__main__":  # worker: one measurement, JSON on the last line of stdout
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
