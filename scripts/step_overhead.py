"""Where a decoding step's time goes: inside the two models' forwards, or around them (generate's loop and
extrapolation). Builds the benchmark's random-weight pair (`hf-extrapolate bench` presets), decodes with the RL
model alone, the processor and the wrapper (sequential), and prints milliseconds per step.

    python scripts/step_overhead.py --model 5m --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM
from hf_extrapolate.bench import GAMMA, PAD_ID, PRESETS, _build, random_prompts
from hf_extrapolate.processor import generate_arguments


class ForwardClock:
    """Seconds spent inside the forwards of the models it is attached to (pre- and post-forward hooks)."""

    def __init__(self, *models: torch.nn.Module):
        self.seconds, self._began = 0.0, 0.0
        self._hooks = [h for m in models for h in (m.register_forward_pre_hook(self._start),
                                                   m.register_forward_hook(self._stop))]  # fmt: skip

    def _start(self, *_: object) -> None:
        self._began = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._began


def step_times(variant: str, preset: str, batch: int, new: int) -> tuple[float, float]:
    """(total, inside the models' forwards) per decoding step, in milliseconds."""
    rl, base = (_build(preset, seed, torch.float32, "cpu", False) for seed in (0, 1))
    model, processors = rl, []
    if variant == "wrapper":
        model = ExtrapolatedForCausalLM(rl, base, GAMMA, concurrent=False)
    elif variant == "processor":
        processors = [DeltaLogpExtrapolation(base, GAMMA)]
    ids = random_prompts(rl.config.vocab_size, batch, 32)

    def generate(n: int) -> None:
        torch.manual_seed(0)
        model.generate(**generate_arguments(
            model, processors, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
            min_new_tokens=n, do_sample=True, top_k=0, pad_token_id=PAD_ID,
        ))  # fmt: skip

    generate(4)
    clock = ForwardClock(rl) if variant == "rl" else ForwardClock(rl, base)
    began = time.perf_counter()
    generate(new)
    return (time.perf_counter() - began) * 1e3 / new, clock.seconds * 1e3 / new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(PRESETS), default="5m", help="random-weight Llama shape (5m)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (1 8)")
    parser.add_argument("--new", type=int, default=256, help="new tokens per row (256)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are printed (3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = ("rl", "processor", "wrapper")
    print(f"{args.model} pair, {args.threads} thread(s), 32-token prompts, {args.new} new tokens, medians of "
          f"{args.repeats}")  # fmt: skip
    print("| batch | variant | ms / step | in the forwards | around them | around, share of the step |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants[r % 3 :] + variants[: r % 3]:
                runs[v].append(step_times(v, args.model, batch, args.new))
        for v in variants:
            total = statistics.median(t for t, _ in runs[v])
            inside = statistics.median(f for _, f in runs[v])
            print(f"| {batch} | {v} | {total:.2f} | {inside:.2f} | {total - inside:.2f} | "
                  f"{(total - inside) / total:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
