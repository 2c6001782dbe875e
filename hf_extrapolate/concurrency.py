"""Concurrent forwards: the base model's forward runs in a worker thread while the RL model's runs in the caller's.

Within one decoding step the two forwards are independent, so with two devices (two GPUs, or a GPU and the
CPU) or two sets of CPU cores the step costs max(RL, base) instead of RL + base. The outputs are those of the
sequential path: each model runs the same operations on the same inputs, only at the same time.

On the CPU the cores are split between the members (`thread_plan`), and Python's thread switch interval is
shortened for the session: a torch forward releases the GIL inside each operation, and with the default 5 ms
interval a thread returning from one waits on the other's Python code (measured on the 49M-parameter benchmark
pair, 2 cores: 1.43× the RL model alone with the default interval, 1.2× with 10 µs).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

T = TypeVar("T")
SWITCH_INTERVAL = 1e-5  # seconds; Python's default is 5e-3
# below this many parameters a CPU forward is mostly Python, which the GIL serialises: measured on 2 cores, a
# 5M-parameter pair decodes slower concurrently (1.99× the RL model alone) than one model after the other (1.71×)
MIN_CPU_PARAMETERS = 20_000_000
CPU = {torch.device("cpu")}


def devices_of(model: PreTrainedModel) -> set[torch.device]:
    """Every device holding a parameter of ``model`` (a model sharded by accelerate spans several)."""
    return {p.device for p in model.parameters()}


def thread_plan(threads: int) -> tuple[int, int]:
    """CPU threads for (RL, base) out of ``threads``: half each, the odd one to the RL model, at least one each."""
    return max(1, threads - threads // 2), max(1, threads // 2)


def cpu_plan(rl: PreTrainedModel, base: PreTrainedModel, cpu_threads: tuple[int, int] | None) -> tuple[int, int]:
    """The (RL, base) torch threads of a concurrent session: ``cpu_threads`` if given; `thread_plan` of torch's
    thread count when both members are on the CPU (they share its cores); otherwise torch's count for each (a member
    on a GPU needs no CPU cores of the other's)."""
    if cpu_threads is not None:
        return cpu_threads
    threads = torch.get_num_threads()
    return thread_plan(threads) if devices_of(rl) == devices_of(base) == CPU else (threads, threads)


def pays_off(rl: PreTrainedModel, base: PreTrainedModel) -> bool:
    """Whether running the two forwards at once is expected to be faster than one after the other.

    Yes when the members share no device (each runs on its own hardware), or when both are on the CPU with at
    least two torch threads to split and at least `MIN_CPU_PARAMETERS` each; no when they share a GPU (their
    kernels queue on the same device) or on one CPU thread.
    """
    rl_devices, base_devices = devices_of(rl), devices_of(base)
    if rl_devices == base_devices == CPU:
        big = min(rl.num_parameters(), base.num_parameters()) >= MIN_CPU_PARAMETERS
        return big and torch.get_num_threads() >= 2
    return not (rl_devices & base_devices)


class ConcurrentForwards:
    """One session of concurrent forwards (a `generate` call, or one bare forward): a worker thread for the base
    model, with ``cpu_threads`` = (RL, base) torch threads (see `cpu_plan`).

    Grad mode, inference mode and autocast of the calling thread carry over to the worker. Use as a context
    manager, then call with the two forwards (no arguments each): returns ``(rl_call(), base_call())``.
    """

    def __init__(self, cpu_threads: tuple[int, int]):
        self.cpu_threads = cpu_threads
        if len(self.cpu_threads) != 2 or min(self.cpu_threads) < 1:
            raise ValueError(f"cpu_threads is (RL threads, base threads), each ≥ 1; got {cpu_threads!r}")
        self._pool: ThreadPoolExecutor | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[ConcurrentForwards]:
        threads, interval = torch.get_num_threads(), sys.getswitchinterval()
        rl_threads, base_threads = self.cpu_threads
        self._pool = ThreadPoolExecutor(1, "hf-extrapolate-base", initializer=torch.set_num_threads,
                                        initargs=(base_threads,))  # fmt: skip
        torch.set_num_threads(rl_threads)
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            yield self
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
            sys.setswitchinterval(interval)
            torch.set_num_threads(threads)

    def __call__(self, rl_call: Callable[[], T], base_call: Callable[[], Any]) -> tuple[T, Any]:
        if self._pool is None:
            raise RuntimeError("call ConcurrentForwards inside `with forwards.session():`")
        future = self._pool.submit(_in_modes(base_call))
        try:
            rl_out = rl_call()
        except BaseException:
            wait([future])  # the base model's cache is not left being written after the error
            raise
        return rl_out, future.result()


def _in_modes(call: Callable[[], T]) -> Callable[[], T]:
    """``call`` under the grad / inference mode and autocast state of the thread that wraps it (they are
    thread-local in torch)."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocasts = [
        (kind, torch.get_autocast_dtype(kind)) for kind in ("cpu", "cuda") if torch.is_autocast_enabled(kind)
    ]

    def run() -> T:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
            for kind, dtype in autocasts:
                stack.enter_context(torch.autocast(kind, dtype=dtype))
            return call()

    return run
