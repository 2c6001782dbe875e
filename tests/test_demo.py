"""The Gradio demo, launched as `python demo/app.py` on a tiny pair: its `/generate` API and its page in Chromium.

Set HFX_DEMO_SCREENSHOT=path to keep the page's screenshot (docs/img/demo.png is made this way). One file: every
test here shares the one served demo (starting a server costs seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import stop_process

from hf_extrapolate import DeltaLogpExtrapolation

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PROMPT = "Compute 12+3-4."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(pair_dir: Path, root: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`python demo/app.py` serving the pair in `pair_dir` on 127.0.0.1: (its URL, its process, its log file).

    Gradio's temporary folder is `root/gradio` (empty unless something was uploaded); the server is stopped
    on exit."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(root / "gradio"))
    log_path = root / "server.log"
    log = open(log_path, "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "app.py"), "--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"),
         "--host", "127.0.0.1", "--port", str(port), *options],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the demo did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, proc, log_path
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def served(pair_dir, tmp_path_factory):
    """(URL, log file, temporary folder) of the demo serving the tiny Llama pair, new tokens capped at 32."""
    root = tmp_path_factory.mktemp("demo")
    with running_demo(pair_dir, root, "--max-new-tokens", "32") as (url, _, log_path):
        yield url, log_path, root / "gradio"


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def test_generate_api(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/generate"]  # the page's own event is private
    names = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert names == [
        "prompt",
        "gamma",
        "mode",
        "criterion",
        "tau",
        "decoding",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
    ]  # fmt: skip  (no parameter can name a model or a path)

    base, rl, extrapolated, data = client.predict(
        prompt=PROMPT, gamma=0.5, mode="selective", tau=-0.3, max_new_tokens=8, api_name="/generate"
    )
    assert data["settings"]["select"] == "delta_logp" and data["settings"]["gamma"] == 0.5
    outputs = data["outputs"]
    assert [outputs[n]["text"] for n in ("base", "rl", "extrapolated")] == [base, rl, extrapolated]
    for name, out in outputs.items():
        assert 1 <= len(out["tokens"]) <= 8
        for tok in out["tokens"]:
            assert tok["delta_logp"] == pytest.approx(tok["logp_rl"] - tok["logp_base"])
            assert [len(tok["top"][m]) for m in ("base", "rl", "extrapolated")] == [5, 5, 5]
            assert (tok["resampled"] is None) == (name != "extrapolated")
    flags = [t["resampled"] for t in outputs["extrapolated"]["tokens"]]
    assert set(flags) <= {0.0, 1.0}  # greedy: each token was resampled or not
    assert outputs["extrapolated"]["expected_resampled_share"] == pytest.approx(sum(flags) / len(flags))

    again = client.predict(prompt=PROMPT, gamma=0.5, mode="selective", tau=-0.3, max_new_tokens=8, api_name="/generate")
    assert list(again[:3]) == [base, rl, extrapolated]  # same seed, same outputs

    with pytest.raises(Exception, match="max new tokens must be a whole number between 1 and 32"):
        client.predict(prompt=PROMPT, max_new_tokens=33, api_name="/generate")
    with pytest.raises(Exception, match="at most 4000"):
        client.predict(prompt="1+" * 2001, api_name="/generate")


def test_controls_describe_the_config_fields(server):
    """The page's extrapolation controls carry `ExtrapolationConfig`'s own field descriptions (one text for the
    CLI, lm-eval's model arguments and the demo)."""
    from hf_extrapolate.configuration import ExtrapolationConfig

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(ExtrapolationConfig)}
    with urllib.request.urlopen(server + "config", timeout=10) as response:
        components = json.load(response)["components"]
    info = {c["props"].get("label"): c["props"].get("info") for c in components}
    assert info["γ"] == helps["gamma"] and info["criterion (selective)"] == helps["select"]
    assert info["temperature"] == helps["temperature"] and info["top-p"] == helps["top_p"]
    assert [i for label, i in info.items() if label and label.startswith("τ")] == [helps["threshold"]]


def test_hostile_requests(served):
    """Every bad field gets the demo's own one-line message, logged without a traceback; uploads are refused and
    nothing lands in gradio's temporary folder."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, log_path, temp = served
    client = Client(url, verbose=False)
    cases = {
        "The prompt must be text, got dict": {"prompt": {"role": "user"}},
        "The prompt must be text, got list": {"prompt": ["x"]},
        "Type a prompt first": {"prompt": ""},
        r"γ must be a number within \[-1, 4\], got 'abc'": {"prompt": PROMPT, "gamma": "abc"},
        r"τ must be a number within \[-5, 5\], got \[1\]": {"prompt": PROMPT, "tau": [1]},
        "mode must be one of full, selective": {"prompt": PROMPT, "mode": {"x": 1}},
        "seed must be a whole number": {"prompt": PROMPT, "seed": "7"},
        "temperature must be a number within": {"prompt": PROMPT, "temperature": True},
        "criterion must be one of": {"prompt": PROMPT, "criterion": "random"},
    }
    for message, request in cases.items():
        with pytest.raises(AppError, match=f"^{message}"):
            client.predict(**request, api_name="/generate")
    text = log_path.read_text()
    assert "refused: Type a prompt first." in text and "Traceback" not in text

    part = b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.bin"\r\n\r\n' + b"0" * 100_000
    upload = urllib.request.Request(
        url + "gradio_api/upload",
        data=part + b"\r\n--x--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=30)
    assert refused.value.code == 413
    assert not [p for p in temp.rglob("*") if p.is_file()]


def last(stream: AsyncIterator) -> Any:
    """The last item of an async iterator, run to its end."""

    async def run() -> Any:
        item = None
        async for item in stream:  # noqa: B007
            pass
        return item

    return asyncio.run(run())


def first(stream: AsyncIterator) -> Any:
    async def run() -> Any:
        try:
            return await anext(stream)
        finally:
            await stream.aclose()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def demo():
    """demo/app.py and its `demo_models` module, imported as `python demo/app.py` imports them: from their folder."""
    folder = str(ROOT / "demo")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location("demo_app", ROOT / "demo" / "app.py")
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        return SimpleNamespace(app=app, models=sys.modules["demo_models"])
    finally:
        sys.path.remove(folder)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_greedy_outputs_are_those_of_generate(demo, pair, tokenizer, mode):
    """The three columns are what plain `generate` gives: base, RL, and RL with `DeltaLogpExtrapolation`."""
    rl, base = pair
    models = demo.models.DemoModels(rl, base, tokenizer, demo.models.Limits())
    config = models.config(0.5, mode, "delta_logp", -0.3, "greedy", 1.0, 1.0)
    columns = last(models.stream(PROMPT, config, 12, 0))
    ids = models.encode(PROMPT)
    common = dict(do_sample=False, max_new_tokens=12, eos_token_id=models.stop_ids, pad_token_id=models.pad_id)
    proc = DeltaLogpExtrapolation(base, 0.5, select=config.select, threshold=config.threshold, temperature=0.0)
    expected = {
        "base": base.generate(ids, **common),
        "rl": rl.generate(ids, **common),
        "extrapolated": rl.generate(ids, logits_processor=[proc], **common),
    }
    for name, out in expected.items():
        assert columns[name].ids == out[0, ids.shape[1] :].tolist(), name
    assert columns["extrapolated"].resample_rate == proc.resample_rate


def test_token_statistics_against_plain_forwards(demo, pair, tokenizer):
    """Each column's per-token card, against one no-cache forward of each model over the finished sequence: the
    token's log-probs, and the top alternatives of π_B, π_R and π_X = softmax((1 + γ) log π_R − γ log π_B)."""
    rl, base = pair
    models = demo.models.DemoModels(rl, base, tokenizer, demo.models.Limits())
    gamma = 0.5
    columns = last(models.stream(PROMPT, models.config(gamma, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0), 10, 0))
    prompt = models.encode(PROMPT)[0]
    for name in ("base", "rl", "extrapolated"):
        ids = torch.cat([prompt, torch.tensor(columns[name].ids)])
        with torch.no_grad():
            lp = {m: model(ids[None]).logits[0].log_softmax(-1) for m, model in (("base", base), ("rl", rl))}
        lp["extrapolated"] = ((1 + gamma) * lp["rl"] - gamma * lp["base"]).log_softmax(-1)
        steps = range(len(prompt) - 1, len(ids) - 1)  # the positions that predict the new tokens
        cards = columns[name].tokens
        assert [c["id"] for c in cards] == columns[name].ids
        for card, t in zip(cards, steps, strict=True):
            assert card["logp_rl"] == pytest.approx(lp["rl"][t, ids[t + 1]].item(), abs=1e-5)
            assert card["logp_base"] == pytest.approx(lp["base"][t, ids[t + 1]].item(), abs=1e-5)
            for model, top in card["top"].items():
                probs, top_ids = lp[model][t].exp().topk(5)
                assert [tokenizer.decode([i]) for i in top_ids.tolist()] == [text for text, _ in top]
                assert [p for _, p in top] == pytest.approx(probs.tolist(), abs=1e-4)
            assert card["resampled"] is None  # full mode


def test_request_limits(demo, pair, tokenizer):
    """Bad requests get one clear message each, before anything is generated."""
    import gradio as gr

    rl, base = pair
    models = demo.models.DemoModels(
        rl, base, tokenizer, demo.models.Limits(max_prompt_chars=100, max_prompt_tokens=40, max_new_tokens=500)
    )
    config = models.config(0.5, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0)
    cases = {
        "Type a prompt first": lambda: first(models.stream("  ", config, 8, 0)),
        "The prompt must be text, got dict": lambda: first(models.stream({"a": 1}, config, 8, 0)),
        "at most 40": lambda: first(models.stream("x" * 90, config, 8, 0)),
        "context of 512 tokens": lambda: first(models.stream(PROMPT, config, 500, 0)),
        "seed must be a whole number": lambda: first(models.stream(PROMPT, config, 8, 1.5)),
        "seed must be a whole number between 0": lambda: first(models.stream(PROMPT, config, 8, 2**64)),
        "max new tokens must be a whole number": lambda: first(models.stream(PROMPT, config, float("nan"), 0)),
        "γ must be a number within": lambda: models.config(9.0, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0),
        "γ must be a number within .* got 1000000": lambda: models.config(10**400, "full", "kl", 0.1, "greedy", 1, 1),
        "criterion must be one of": lambda: models.config(0.5, "selective", "random", 0.1, "greedy", 1.0, 1.0),
        "top-p must be a number within": lambda: models.config(0.5, "full", "delta_logp", -0.3, "sample", 1.0, 0.0),
        "τ must be a number within": lambda: models.config(0.5, "selective", "kl", "0.1", "greedy", 1.0, 1.0),
        "decoding must be one of": lambda: models.config(0.5, "full", "delta_logp", -0.3, None, 1.0, 1.0),
    }
    for message, call in cases.items():
        with pytest.raises(gr.Error, match=message):
            call()
    assert models.slots.acquire(blocking=False)  # no refused request holds a slot


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_a_cancelled_request_stops_its_generations(demo, pair, tokenizer, how):
    """Cancelling the handler's task (what gradio's /cancel does) or closing its iteration stops the three
    generation threads within a second; the request's slot is held until they have ended."""
    rl, base = pair
    models = demo.models.DemoModels(rl, base, tokenizer, demo.models.Limits(max_new_tokens=470))
    config = models.config(0.5, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0)
    idle = threading.active_count()

    async def run() -> tuple[float, int]:
        stream = models.stream(PROMPT, config, 470, 0)
        generated = []

        async def consume() -> None:
            async for columns in stream:
                generated.append(sum(len(c.ids) for c in columns.values()))
                if how == "close":
                    break

        task = asyncio.create_task(consume())
        deadline = time.monotonic() + 30
        while not generated and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert generated and threading.active_count() == idle + 4  # a supervisor and three generations
        assert not models.slots.acquire(blocking=False)
        start = time.monotonic()
        if how == "cancel":
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if how == "close":
            await stream.aclose()
        return time.monotonic() - start, generated[-1]

    elapsed, tokens = asyncio.run(run())
    assert threading.active_count() == idle and elapsed < 1.0
    assert tokens < 3 * 470  # stopped early
    assert models.slots.acquire(blocking=False)  # the slot is free again


@pytest.mark.browser
def test_page_in_chromium(served, tmp_path):
    """The page runs a request, shows a token's card inside the window (also for the right-most token), and a
    refused request clears the last outputs (with the refusal as a toast, and no traceback in the server log)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, log_path, _ = served
    shot = Path(os.environ.get("HFX_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    width, height = 1280, 1000  # a common laptop width: the right-most column's cards must still fit
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="networkidle")
            page.locator("#prompt textarea").fill(PROMPT)
            page.get_by_role("radio", name="selective").check()
            page.locator("#run").click()
            for name in ("base", "rl", "extrapolated"):  # scored outputs are token spans with tooltips
                page.locator(f"#out-{name} .hfx-tok").first.wait_for(timeout=60_000)
            page.get_by_text("marked as resampled").wait_for(timeout=60_000)
            tokens = page.locator("#out-extrapolated .hfx-tok")
            tooltip = tokens.first.get_attribute("data-tip")
            tokens.first.hover()  # its card of alternatives shows in the screenshot
            card = page.locator("#hfx-card")
            card.wait_for(state="visible", timeout=10_000)
            page.screenshot(path=str(shot), full_page=True)
            right = max(range(tokens.count()), key=lambda i: (b := tokens.nth(i).bounding_box())["x"] + b["width"])
            tokens.nth(right).hover()
            card.wait_for(state="visible", timeout=10_000)
            box, right_text = card.bounding_box(), card.inner_text()

            page.locator("#prompt textarea").fill("")
            page.locator("#run").click()
            page.get_by_text("Type a prompt first.").first.wait_for(timeout=30_000)
            left = page.locator(".hfx-tok").count()
        finally:
            browser.close()
    assert "Δlog p" in tooltip and "π_X" in tooltip
    assert shot.stat().st_size > 10_000
    assert box["x"] >= 0 and box["y"] >= 0, box  # the right-most token's card lies inside the window
    assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, box
    assert "π_X (γ=0.5)" in right_text
    assert left == 0  # the refused request cleared the outputs
    assert "refused: Type a prompt first." in log_path.read_text() and "Traceback" not in log_path.read_text()


def test_command_line_takes_the_pair_options(demo, pair, pair_dir, capsys):
    """`--dry-run` prints the memory estimate and loads nothing; one model without the other is refused."""
    with pytest.raises(SystemExit) as done:
        demo.app.main(
            ["--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"), "--dry-run", "--dtype", "float32"]
        )
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["rl"]["parameters"] == sum(p.numel() for p in pair[0].parameters())
    with pytest.raises(SystemExit) as refused:
        demo.app.main(["--rl", str(pair_dir / "rl")])
    assert refused.value.code == 2 and "give both --rl and --base" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        demo.app.main(["--concurrency", "0"])
    assert refused.value.code == 2 and "--concurrency must be at least 1" in capsys.readouterr().err
