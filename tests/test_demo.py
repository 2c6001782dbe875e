"""The Gradio demo, launched as `python demo/app.py` on a tiny pair: its `/generate` API and its page in Chromium.

Set HFX_DEMO_SCREENSHOT=path to keep the page's screenshot (docs/img/demo.png is made this way).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def server(pair_dir, tmp_path_factory):
    """URL of the demo serving the tiny Llama pair on 127.0.0.1, launched through its command line."""
    root = tmp_path_factory.mktemp("demo")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    log = open(root / "server.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "app.py"), "--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"),
         "--host", "127.0.0.1", "--port", str(port), "--max-new-tokens", "32"],
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
                    log.seek(0)
                    pytest.fail(f"the demo did not start:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


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


@pytest.fixture(scope="module")
def app():
    """demo/app.py as a module."""
    spec = importlib.util.spec_from_file_location("demo_app", ROOT / "demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_greedy_outputs_are_those_of_generate(app, pair, tokenizer, mode):
    """The three columns are what plain `generate` gives: base, RL, and RL with `DeltaLogpExtrapolation`."""
    rl, base = pair
    models = app.DemoModels(rl, base, tokenizer, app.Limits())
    config = models.config(0.5, mode, "delta_logp", -0.3, "greedy", 1.0, 1.0)
    *_, columns = models.stream(PROMPT, config, 12, 0)
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


def test_request_limits(app, pair, tokenizer):
    """Bad requests get one clear message each, before anything is generated."""
    import gradio as gr

    rl, base = pair
    models = app.DemoModels(
        rl, base, tokenizer, app.Limits(max_prompt_chars=100, max_prompt_tokens=40, max_new_tokens=500)
    )
    config = models.config(0.5, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0)
    cases = {
        "Type a prompt first": lambda: next(models.stream("  ", config, 8, 0)),
        "at most 40": lambda: next(models.stream("x" * 90, config, 8, 0)),
        "context of 512 tokens": lambda: next(models.stream(PROMPT, config, 500, 0)),
        "seed must be a whole number": lambda: next(models.stream(PROMPT, config, 8, 1.5)),
        "γ must be within": lambda: models.config(9.0, "full", "delta_logp", -0.3, "greedy", 1.0, 1.0),
        "criterion must be one of": lambda: models.config(0.5, "selective", "random", 0.1, "greedy", 1.0, 1.0),
        "top_p must be in": lambda: models.config(0.5, "full", "delta_logp", -0.3, "sample", 1.0, 0.0),
    }
    for message, call in cases.items():
        with pytest.raises(gr.Error, match=message):
            call()


@pytest.mark.browser
def test_page_in_chromium(server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = Path(os.environ.get("HFX_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server, wait_until="networkidle")
            page.locator("#prompt textarea").fill(PROMPT)
            page.get_by_role("radio", name="selective").check()
            page.locator("#run").click()
            for name in ("base", "rl", "extrapolated"):  # scored outputs are token spans with tooltips
                page.locator(f"#out-{name} .hfx-tok").first.wait_for(timeout=60_000)
            page.get_by_text("marked as resampled").wait_for(timeout=60_000)
            token = page.locator("#out-extrapolated .hfx-tok").first
            tooltip = token.get_attribute("data-tip")
            token.hover()  # its card of alternatives shows in the screenshot
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert "Δlog p" in tooltip and "π_X" in tooltip
    assert shot.stat().st_size > 10_000


def test_command_line_takes_the_pair_options(app, pair, pair_dir, capsys):
    """`--dry-run` prints the memory estimate and loads nothing; one model without the other is refused."""
    with pytest.raises(SystemExit) as done:
        app.main(["--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"), "--dry-run", "--dtype", "float32"])
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["rl"]["parameters"] == sum(p.numel() for p in pair[0].parameters())
    with pytest.raises(SystemExit) as refused:
        app.main(["--rl", str(pair_dir / "rl")])
    assert refused.value.code == 2 and "give both --rl and --base" in capsys.readouterr().err
