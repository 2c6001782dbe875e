"""A bounded load test of the demo server on 127.0.0.1: a submit-and-cancel flood, then 40 concurrent clients.

After each, the server must answer a normal request promptly, stop spending CPU within ~2 s, and come back near
its idle thread count and memory. The figures are printed (`pytest -s`) so they can be quoted.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_demo import PROMPT, running_demo

pytestmark = pytest.mark.slow

LONG = 470  # new tokens per output: a few seconds of work per request on the tiny pair (context 512)
CALLS = 40
THREAD_MARGIN = 4  # threads above idle allowed once the load is over
RSS_MARGIN_MIB = 64
IDLE_CPU_PER_S = 0.25  # CPU seconds per second that count as idle (gradio's queue loop, heartbeats)


def process_figures(pid: int) -> dict[str, float]:
    """Threads, resident memory (MiB) and CPU seconds (user + system) of process `pid`, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the command name
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "threads": int(fields[17]),
        "rss_mib": round(int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        "cpu_s": round((int(fields[11]) + int(fields[12])) / ticks, 2),
    }


def settled_after(pid: int, limit: float = 10.0, window: float = 1.0) -> float:
    """Seconds until the process's CPU use over one `window` falls to the idle rate (at most `limit`)."""
    start = time.monotonic()
    last = process_figures(pid)["cpu_s"]
    while time.monotonic() - start < limit:
        time.sleep(window)
        now = process_figures(pid)["cpu_s"]
        if now - last <= IDLE_CPU_PER_S * window:
            return time.monotonic() - start - window
        last = now
    return limit


def timed_request(client, max_new_tokens: int = 8) -> float:
    start = time.monotonic()
    client.predict(prompt=PROMPT, max_new_tokens=max_new_tokens, api_name="/generate")
    return time.monotonic() - start


def test_demo_holds_under_load(pair_dir, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    with running_demo(pair_dir, tmp_path, "--max-new-tokens", str(LONG), "--max-queue", "32") as (url, proc, log):
        client = Client(url, verbose=False)
        long_request = timed_request(client, LONG)  # also warms the server up: threads, allocations
        settled_after(proc.pid)
        idle = process_figures(proc.pid)
        print(f"\nidle: {idle}; one request of {LONG} tokens per output: {long_request:.1f}s")

        def check(phase: str, started: float, before: dict) -> None:
            peak = process_figures(proc.pid)
            settle = settled_after(proc.pid)
            after = process_figures(proc.pid)
            normal = timed_request(client)
            print(f"{phase}: took {time.monotonic() - started:.1f}s, CPU {before['cpu_s']} -> {peak['cpu_s']} s, "
                  f"idle again {settle:.1f}s after; then {after}; a normal request {normal:.2f}s")  # fmt: skip
            assert settle <= 2.0, f"{phase}: the server kept computing for {settle:.1f}s"
            assert normal < 10.0, f"{phase}: a normal request took {normal:.1f}s"
            assert after["threads"] <= idle["threads"] + THREAD_MARGIN, (phase, after)
            assert after["rss_mib"] <= idle["rss_mib"] + RSS_MARGIN_MIB, (phase, after)

        # (a) submit-and-cancel: each call is cancelled mid-generation
        before, started, peak_threads = process_figures(proc.pid), time.monotonic(), 0
        for _ in range(CALLS):
            job = client.submit(prompt=PROMPT, max_new_tokens=LONG, api_name="/generate")
            time.sleep(0.3)
            peak_threads = max(peak_threads, process_figures(proc.pid)["threads"])
            job.cancel()
        print(f"flood: {CALLS} submit-and-cancel calls, peak threads {peak_threads}")
        assert peak_threads <= idle["threads"] + 12  # one request: a supervisor, three generations; a few of gradio
        check("flood", started, before)

        # (b) concurrent clients, each with its own session; beyond the queue's size they are turned away
        def one_client(_: int) -> str:
            job = Client(url, verbose=False).submit(prompt=PROMPT, max_new_tokens=16, api_name="/generate")
            try:
                job.result(timeout=120)
                return "done"
            except TimeoutError:
                job.cancel()
                return "timed out"
            except QueueError:
                return "queue full"
            except AppError as err:
                return f"error: {err}"

        before, started = process_figures(proc.pid), time.monotonic()
        with ThreadPoolExecutor(CALLS) as pool:
            outcomes = list(pool.map(one_client, range(CALLS)))
        counts = {o: outcomes.count(o) for o in set(outcomes)}
        print(f"{CALLS} concurrent clients: {counts}")
        assert counts.get("done", 0) >= 1 and set(counts) <= {"done", "queue full"}, counts
        check("concurrent clients", started, before)
        assert "Traceback" not in log.read_text()
