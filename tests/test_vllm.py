"""The base/RL pair as one vLLM model (`hf_extrapolate.vllm`) against independent references.

References: a plain-torch no-cache two-model loop (both models recomputed on the whole prefix at every step) and
the transformers processor route. The engine tests need vLLM (the `vllm` extra: see docs/vllm.md) and run in one
process, eager, fp32, on tiny members with head_dim 32 (the CPU attention backend's smallest); the config checks
run everywhere. One file: all engine tests share one engine (vLLM's process-wide state allows one at a time), so
their order matters.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from conftest import perturbed, stop_process
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolationConfig
from hf_extrapolate.extrapolation import combine
from hf_extrapolate.pair_folder import write_pair_folder
from hf_extrapolate.vllm.config import VllmPairConfig

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (docs/vllm.md: a venv of its own)")

PROMPTS = ["12+3=", "1+1234567=", "a", "99*9=12", "7"]
NEW = [48, 60, 52, 56, 50]  # different lengths, so that queued requests join while others decode
# scripts/gpu_checks.sh runs these tests on CUDA with graphs captured (VLLM_TEST_COMPILED=1) and with both halves
# sharded over two GPUs (VLLM_TEST_TP=2); CI runs them eager on the CPU, in one process
TP = int(os.environ.get("VLLM_TEST_TP", "1"))
ENGINE = dict(
    dtype="float32", enforce_eager=not os.environ.get("VLLM_TEST_COMPILED"), tensor_parallel_size=TP,
    distributed_executor_backend="uni" if TP == 1 else "mp", max_model_len=256, max_num_seqs=2, max_logprobs=-1,
    seed=0,
)  # fmt: skip
FULL = {"gamma": 0.5}
SELECTIVE = {"gamma": 1.0, "select": "delta_logp", "threshold": -0.3, "temperature": 0.7, "top_p": 0.9}


def member(arch: str, vocab_size: int = 103, seed: int = 0):
    """A random 2-layer Llama or Qwen2 with head_dim 32, its logits sharpened so that the two members differ."""
    torch.manual_seed(seed)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_class(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def save_pair(root, tokenizer, arch: str, settings: dict, rl_vocab: int | None = None, base_vocab: int = 103):
    """(rl, base, pair folder): members saved under ``root`` and the folder `export` writes, naming them."""
    base = member(arch, base_vocab)
    rl = perturbed(base, vocab_size=rl_vocab)
    for name, model in (("rl", rl), ("base", base)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    write_pair_folder(root / "pair", str(root / "rl"), str(root / "base"), ExtrapolationConfig(**settings), tokenizer)
    return rl, base, root / "pair"


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p).input_ids for p in PROMPTS]


@torch.no_grad()
def no_cache_greedy(rl, base, ids: list[int], new: int, settings: dict, width: int) -> list[int]:
    """Both models recomputed on the whole prefix at every step; argmax of `combine` on the shared width."""
    x = torch.tensor([ids])
    for _ in range(new):
        logp, _ = combine(rl(x).logits[:, -1, :width], base(x).logits[:, -1, :width], ExtrapolationConfig(**settings))
        x = torch.cat([x, logp.argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids) :].tolist()


@torch.no_grad()
def hf_log_probs(rl, base, ids: list[int], out: list[int], settings: dict, width: int) -> torch.Tensor:
    """log π_X at every generated position of ``ids + out`` ([len(out), width]), as the transformers route
    computes it: `combine` on both models' logits, cut to the shared width."""
    x = torch.tensor([ids + out])
    positions = slice(len(ids) - 1, len(ids) + len(out) - 1)
    rl_logits, base_logits = rl(x).logits[0, positions, :width], base(x).logits[0, positions, :width]
    return combine(rl_logits, base_logits, ExtrapolationConfig(**settings))[0]


@torch.no_grad()
def processor_greedy(rl, base, tokenizer, settings: dict, new: int) -> list[list[int]]:
    """The transformers processor route: one left-padded batch through `generate`, greedy."""
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    out = rl.generate(**proc.generate_kwargs(rl, **enc, do_sample=False, max_new_tokens=new, pad_token_id=0))
    return out[:, enc.input_ids.shape[1] :].tolist()


def logprob_matrix(step_logprobs, vocab: int) -> torch.Tensor:
    """vLLM's full-vocabulary logprobs of each generated step as a [steps, vocab] tensor."""
    rows = torch.full((len(step_logprobs), vocab), float("nan"))
    for i, step in enumerate(step_logprobs):
        for token, lp in step.items():
            rows[i, token] = lp.logprob
    return rows


def generate(llm, tokenizer, params, only: int | None = None):
    """vLLM's completions of `PROMPTS` (token ids in, no special tokens added), or of prompt ``only`` alone."""
    from vllm import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids(tokenizer)]
    if only is not None:
        prompts, params = [prompts[only]], [params[only]]
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def greedy_params(new: int, **kw):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=new, ignore_eos=True, **kw)


def close(llm) -> None:
    """Shut the engine down now (its memory and vLLM's process-wide parallel groups go with it)."""
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


# -- config checks (no engine) ---------------------------------------------------------------------------------------


def test_pair_config_reads_both_members(tmp_path, tokenizer):
    save_pair(tmp_path, tokenizer, "qwen2", SELECTIVE, rl_vocab=128, base_vocab=112)
    config = VllmPairConfig.from_pretrained(tmp_path / "pair")
    assert (config.text_config.vocab_size, config.base_config.vocab_size) == (128, 112)
    assert config.get_text_config() is config.text_config  # vLLM reads the pair's shapes from the RL member
    assert config.settings == ExtrapolationConfig(**SELECTIVE)
    again = VllmPairConfig.from_dict(config.to_dict())  # how vLLM's processes copy it: no folder needed
    assert again.base_config.vocab_size == 112
    write_pair_folder(tmp_path / "relative", "../rl", "../base", ExtrapolationConfig(**FULL), tokenizer)
    assert VllmPairConfig.from_pretrained(tmp_path / "relative").base_config.vocab_size == 112  # beside the folder


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "supports LlamaForCausalLM and Qwen2ForCausalLM members"),
        ({"num_hidden_layers": 3}, "differ in num_hidden_layers 2 vs 3"),
        ({"extrapolation": {"gamma": 0.5, "select": "delta_logp"}}, "needs a threshold"),
    ],
)
def test_pair_config_refuses_what_it_cannot_build(tmp_path, tokenizer, change, message):
    save_pair(tmp_path, tokenizer, "llama", FULL)
    target = tmp_path / ("pair" if "extrapolation" in change else "base") / "config.json"
    config = json.loads(target.read_text())
    target.write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        VllmPairConfig.from_pretrained(tmp_path / "pair")


@needs_vllm
def test_pair_config_refuses_a_head_dim_the_cpu_backend_lacks(tmp_path, tokenizer):
    save_pair(tmp_path, tokenizer, "llama", FULL)
    for role in ("rl", "base"):  # head_dim 16: vLLM's CPU attention has 32, 64, 80, ...
        target = tmp_path / role / "config.json"
        target.write_text(json.dumps({**json.loads(target.read_text()), "head_dim": 16}))
    with pytest.raises(ValueError, match=r"CPU attention supports head_dim 32, 64, .*; these models have 16"):
        VllmPairConfig.from_pretrained(tmp_path / "pair")


def test_sampler_guard():
    from_args = pytest.importorskip("vllm").SamplingParams
    from hf_extrapolate.vllm.sampling import check_sampler, request_settings

    selective, full = ExtrapolationConfig(**SELECTIVE), ExtrapolationConfig(**FULL)
    check_sampler(from_args(temperature=0.7, top_p=0.5), full)  # full mode leaves vLLM's sampler to the user
    check_sampler(from_args(temperature=0), selective)
    with pytest.raises(ValueError, match=re.escape("got temperature=0.7, top_p=0.5; send temperature=1")):
        check_sampler(from_args(temperature=0.7, top_p=0.5), selective)
    own = request_settings(from_args(extra_args={"extrapolation": {"gamma": 2.0}}), selective)
    assert own == ExtrapolationConfig(**{**SELECTIVE, "gamma": 2.0})
    with pytest.raises(ValueError, match="unknown extrapolation setting"):
        request_settings(from_args(extra_args={"extrapolation": {"gama": 2.0}}), selective)


# -- engines ---------------------------------------------------------------------------------------------------------
# One engine per module where possible (startup 5-20 s). Closing an in-process engine tears down vLLM's
# process-wide parallel groups, which leaves any other live engine unusable: the tests that use `llama_llm` come
# first, and the tests that close an engine of their own come last.


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory, tokenizer):
    return save_pair(tmp_path_factory.mktemp("llama"), tokenizer, "llama", FULL)


@pytest.fixture(scope="module")
def llama_llm(llama_pair):
    from vllm import LLM

    from hf_extrapolate.vllm import register

    register()
    llm = LLM(str(llama_pair[2]), **ENGINE)
    yield llm
    close(llm)


@needs_vllm
@pytest.mark.slow
def test_greedy_equals_no_cache_loop_and_logprobs_equal_hf_route(llama_pair, llama_llm, tokenizer):
    rl, base, _ = llama_pair
    outs = generate(llama_llm, tokenizer, [greedy_params(n, logprobs=-1) for n in NEW])
    for ids, new, out in zip(prompt_ids(tokenizer), NEW, outs):
        assert list(out.token_ids) == no_cache_greedy(rl, base, ids, new, FULL, 103)
        ref = hf_log_probs(rl, base, ids, list(out.token_ids), FULL, 103)
        torch.testing.assert_close(logprob_matrix(out.logprobs, 103), ref, atol=1e-4, rtol=0)


@needs_vllm
@pytest.mark.slow
def test_greedy_equals_hf_processor_route(llama_pair, llama_llm, tokenizer):
    rl, base, _ = llama_pair
    outs = generate(llama_llm, tokenizer, greedy_params(48))
    assert [list(o.token_ids) for o in outs] == processor_greedy(rl, base, tokenizer, FULL, 48)


@needs_vllm
@pytest.mark.slow
def test_per_request_settings_in_one_batch_equal_separate_runs(llama_pair, llama_llm, tokenizer):
    rl, base, _ = llama_pair
    greedy_selective = {**SELECTIVE, "temperature": 0.0}
    settings = [{"gamma": 0.2}, greedy_selective, None, {"gamma": 2.0}, {"gamma": 0.0}]
    params = [
        greedy_params(n, logprobs=-1, extra_args=None if s is None else {"extrapolation": s})
        for n, s in zip(NEW, settings)
    ]
    together = generate(llama_llm, tokenizer, params)
    for i, (ids, new, s) in enumerate(zip(prompt_ids(tokenizer), NEW, settings)):
        (alone,) = generate(llama_llm, tokenizer, params, only=i)
        assert list(together[i].token_ids) == list(alone.token_ids)
        effective = {**FULL, **(s or {})}
        assert list(alone.token_ids) == no_cache_greedy(rl, base, ids, new, effective, 103), s
        ref = hf_log_probs(rl, base, ids, list(alone.token_ids), effective, 103)
        torch.testing.assert_close(logprob_matrix(together[i].logprobs, 103), ref, atol=1e-4, rtol=0)


def plugin_entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(e.value == "hf_extrapolate.vllm:register" for e in entry_points(group="vllm.general_plugins"))


def serve_command() -> list[str]:
    """`vllm serve`; vllm-cpu 0.32.0's `vllm` CLI fails at start (it asks for the version of a dist named `vllm`),
    so there the same server is started through its module."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm")
    except PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@needs_vllm
@pytest.mark.slow
@pytest.mark.skipif(
    not plugin_entry_point_installed(), reason="hf-extrapolate's vllm.general_plugins entry point is not installed"
)
def test_vllm_serve_answers_like_the_offline_engine(llama_pair, llama_llm, tokenizer, tmp_path):
    """A real `vllm serve` on 127.0.0.1 (found through the entry point, as users run it), started and stopped here:
    its greedy completions, with the folder's settings and with per-request ones, and its chat completion equal the
    offline engine's."""
    folder, new = llama_pair[2], 24
    per_request = [
        {},
        {"extrapolation_gamma": 2.0},
        {"extrapolation_select": "delta_logp", "extrapolation_threshold": -0.3},
    ]
    offline = generate(llama_llm, tokenizer, [greedy_params(new, extra_args=x or None) for x in [*per_request, {}, {}]])
    messages = [{"role": "user", "content": "Compute 12 + 30."}]
    (chat,) = llama_llm.chat(messages, greedy_params(new), use_tqdm=False)  # the chat template, offline
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(
        [*serve_command(), str(folder), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
         "--max-num-seqs", "2", "--distributed-executor-backend", "uni"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not answer /health within 300 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        for ids, xargs, expected in zip(prompt_ids(tokenizer), per_request, offline):
            body = {"model": str(folder), "prompt": ids, "max_tokens": new, "temperature": 0, "ignore_eos": True,
                    "return_token_ids": True, "vllm_xargs": xargs or None}  # fmt: skip
            (choice,) = post(f"{url}/v1/completions", body)["choices"]
            assert choice["token_ids"] == list(expected.token_ids)
            assert choice["text"] == expected.text
        body = {"model": str(folder), "messages": messages, "max_tokens": new, "temperature": 0, "ignore_eos": True}
        (choice,) = post(f"{url}/v1/chat/completions", body)["choices"]
        assert choice["message"]["content"] == chat.outputs[0].text
    finally:
        stop_process(server, timeout=60)
        log.close()


@needs_vllm
@pytest.mark.slow
def test_generate_backend_vllm_prints_the_engines_greedy_text(llama_pair, llama_llm, tokenizer, tmp_path):
    """(Before the tests that close engines: it reads the expected text from `llama_llm`.)"""
    from vllm import SamplingParams, TokensPrompt

    rl, base = str(folder_of(llama_pair, "rl")), str(folder_of(llama_pair, "base"))
    ids = tokenizer("12+3=", add_special_tokens=not tokenizer.chat_template).input_ids
    (expected,) = llama_llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(temperature=0, max_tokens=24))
    proc = run_cli("generate", "--rl", rl, "--base", base, "--gamma", "0.5", "--temperature", "0", "--prompt", "12+3=",
                   "--no-chat-template", "--max-new-tokens", "24", "--dtype", "float32", "--backend", "vllm",
                   *CLI_ENGINE, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.endswith(expected.outputs[0].text + "\n")


@needs_vllm
@pytest.mark.slow
def test_gamma_zero_is_the_rl_model_alone(llama_pair, llama_llm, tokenizer):
    from vllm import LLM

    rl_alone = {"extrapolation": {"gamma": 0}}
    pair = generate(llama_llm, tokenizer, [greedy_params(n, logprobs=5, extra_args=rl_alone) for n in NEW])
    rl_llm = LLM(str(llama_pair[2].parent / "rl"), **ENGINE)
    try:
        alone = generate(rl_llm, tokenizer, [greedy_params(n, logprobs=5) for n in NEW])
    finally:
        close(rl_llm)
    for a, b in zip(pair, alone):
        assert list(a.token_ids) == list(b.token_ids)
        for step_a, step_b in zip(a.logprobs, b.logprobs):
            assert step_a.keys() == step_b.keys()
            assert all(abs(step_a[t].logprob - step_b[t].logprob) < 1e-5 for t in step_a)


@needs_vllm
@pytest.mark.slow
def test_selective_qwen2_pair_with_padded_vocabularies(tmp_path, tokenizer):
    """Folder in selective mode, members of widths 128 and 112 with a 103-token tokenizer: log π_X within 1e-4 of
    the transformers route, rows from 103 on −inf; vLLM's sampler left neutral, and conflicting requests refused."""
    from vllm import LLM, SamplingParams
    from vllm.exceptions import VLLMValidationError

    from hf_extrapolate.vllm import register

    rl, base, folder = save_pair(tmp_path, tokenizer, "qwen2", SELECTIVE, rl_vocab=128, base_vocab=112)
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_p": 0.8, "top_k": 20}))
    register()
    llm = LLM(str(folder), **ENGINE)
    try:
        defaults = llm.get_default_sampling_params()
        assert (defaults.temperature, defaults.top_p, defaults.top_k) == (1.0, 1.0, -1)
        with pytest.raises(VLLMValidationError, match=re.escape("must not warp again: got temperature=0.7")):
            llm.generate(["a"], SamplingParams(temperature=0.7, max_tokens=2), use_tqdm=False)
        sampled = generate(llm, tokenizer, SamplingParams(max_tokens=48, ignore_eos=True, logprobs=-1, seed=1))
        greedy = generate(llm, tokenizer, greedy_params(48))
    finally:
        close(llm)
    for ids, out, arg in zip(prompt_ids(tokenizer), sampled, greedy):
        got = logprob_matrix(out.logprobs, 128)
        assert torch.isneginf(got[:, 103:]).all()
        ref = hf_log_probs(rl, base, ids, list(out.token_ids), SELECTIVE, 103)
        assert torch.equal(torch.isneginf(got[:, :103]), torch.isneginf(ref))
        finite = ~torch.isneginf(ref)
        torch.testing.assert_close(got[:, :103][finite], ref[finite], atol=1e-4, rtol=0)
        assert list(arg.token_ids) == no_cache_greedy(rl, base, ids, 48, SELECTIVE, 103)


@needs_vllm
@pytest.mark.slow
def test_pair_engine_from_members_samples_the_settings_as_the_cli_gives_them(llama_pair, tokenizer):
    from hf_extrapolate.vllm.engine import pair_engine, pair_sampling_params

    rl, base, folder = llama_pair
    settings = {"gamma": 1.0, "temperature": 0.0}  # the CLI puts its --temperature into the settings
    llm = pair_engine(str(folder.parent / "rl"), str(folder.parent / "base"), ExtrapolationConfig(**settings), **ENGINE)
    try:
        params = pair_sampling_params(ExtrapolationConfig(**settings), 48, ignore_eos=True)
        (out,) = generate(llm, tokenizer, [params] * len(PROMPTS), only=1)
    finally:
        close(llm)
    assert list(out.token_ids) == no_cache_greedy(rl, base, prompt_ids(tokenizer)[1], 48, settings, 103)


# -- the command line and lm-eval (each in a process of its own, as users run them) ---------------------------------

ONE_PROCESS = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
CLI_ENGINE = ["--vllm-arg", "enforce_eager=true", "--vllm-arg", "max_model_len=256",
              "--vllm-arg", "distributed_executor_backend=uni"]  # fmt: skip


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_extrapolate.cli", *args], cwd=cwd, env=ONE_PROCESS,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_dry_run_reports_the_pairs_vllm_memory(tmp_path, tokenizer):
    """Both halves' weights and KV per token (twice one model's), and the smallest tensor-parallel size that fits."""
    save_pair(tmp_path, tokenizer, "llama", FULL)
    proc = run_cli("generate", "--rl", str(tmp_path / "rl"), "--base", str(tmp_path / "base"), "--prompt", "x",
                   "--backend", "vllm", "--dry-run", "--dtype", "float32", "--gpu-gib", "1", "--max-new-tokens", "64",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    one_model_kv = 2 * 2 * 1 * 32 * 4  # K and V, 2 layers, 1 KV head, head_dim 32, float32: bytes per token
    assert report["vllm"]["kv_cache_kib_per_token"] == pytest.approx(2 * one_model_kv / 1024)
    assert report["vllm"]["weights_gib"] == pytest.approx(report["rl"]["weights_gib"] + report["base"]["weights_gib"])
    assert report["vllm"]["suggested_tensor_parallel_size"] == 1
    assert [p["tensor_parallel_size"] for p in report["vllm"]["plans"]] == [1, 2]  # 2 heads: TP 4+ cannot split them


def test_import_vllm_names_the_cpu_install_trap(tmp_path, monkeypatch):
    """A vllm whose import fails on a mismatched torchvision (vllm-cpu's install) gives one line with the fix."""
    from hf_extrapolate.vllm import import_vllm

    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    with pytest.raises(ImportError, match=r"pip uninstall -y torchvision torchaudio torchcodec"):
        import_vllm()


@needs_vllm
def test_cpu_distribution_answers_for_vllm(monkeypatch):
    import importlib.metadata as metadata

    from hf_extrapolate.vllm import alias_cpu_distribution

    try:
        expected = metadata.version("vllm")  # a GPU install: nothing to do
    except metadata.PackageNotFoundError:
        expected = metadata.version("vllm-cpu") + "+cpu"  # what vLLM's own platform check reads
    monkeypatch.setattr(metadata, "version", metadata.version)  # restored after the test
    alias_cpu_distribution()
    assert metadata.version("vllm") == expected
    assert metadata.version("pytest") == pytest.__version__  # other names untouched


def folder_of(pair, role: str):
    return pair[2].parent / role


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("settings", ["gamma=0.5", "gamma=1.0,select=delta_logp,threshold=-0.3"])
def test_eval_backend_vllm_answers_like_the_hf_route(llama_pair, tmp_path, settings):
    """`hf-extrapolate eval --backend vllm` and the transformers route (`--model hfx`) give the same greedy responses
    on hfx_toy_arith, full and selective (whose greedy task temperature goes to the pair per request)."""
    rl, base = folder_of(llama_pair, "rl"), folder_of(llama_pair, "base")
    common = ["--tasks", "hfx_toy_arith", "--limit", "4", "--gen_kwargs", "max_gen_toks=24", "--log_samples"]
    responses = {}
    for backend, extra in (("hf", ",dtype=float32"), ("vllm", ",dtype=float32,enforce_eager=True,max_model_len=256")):
        out = tmp_path / backend
        proc = run_cli("eval", "--backend", backend, "--model", "hfx", "--model_args",
                       f"rl={rl},base={base},{settings}{extra}", *common, "--output_path", str(out),
                       *(["--device", "cpu"] if backend == "hf" else []), cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (samples,) = out.rglob("samples_hfx_toy_arith_*.jsonl")
        responses[backend] = [json.loads(line)["resps"] for line in samples.read_text().splitlines()]
    assert responses["vllm"] == responses["hf"]


@needs_vllm
@pytest.mark.slow
def test_bench_backend_vllm_measures_both_engines(tmp_path):
    """A smoke run of `bench --backend vllm` (its grid shrunk): each vLLM variant runs, emits every token, and the
    pair's throughput target is checked against the single model."""
    proc = run_cli("bench", "--backend", "vllm", "--model", "cpu", "--lengths", "8/16", "--batches", "2",
                   "--variants", "vllm-rl,vllm-pair", "--out", str(tmp_path / "b"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"vllm-rl", "vllm-pair"} and all(r["tokens"] == 16 for r in rows.values())
    assert all(r["startup_seconds"] > 0 and r["peak_bytes"] > 0 for r in rows.values())
    (target,) = report["targets"]
    assert target["target"] == "vllm-pair time / vllm-rl time, 8/16, batch 2" and target["limit"] == 2.1
