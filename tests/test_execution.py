"""How the wrapper runs never changes what it outputs: concurrent forwards (the base model in a worker thread) decode
bit for bit as one after the other, static caches as dynamic ones."""

from __future__ import annotations

import contextlib
import sys
import threading

import pytest
import torch
from conftest import perturbed, tiny_model
from transformers import UnbatchedClassifierFreeGuidanceLogitsProcessor

from hf_extrapolate import ExtrapolatedForCausalLM
from hf_extrapolate import concurrency as conc
from hf_extrapolate.concurrency import ConcurrentForwards, cpu_plan, pays_off, thread_plan

PROMPTS = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 21, 4, 30, 12, 8]])  # the first row left-padded
MASK = (PROMPTS != 0).long()


@contextlib.contextmanager
def one_thread():
    """Both ways at one torch thread per model: a different thread count rounds matrix products differently
    (by ~1e-6 here), as it does for any model, so bit-equality is only asked at equal thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decode(pair, concurrent: bool, settings: dict | None = None, **kwargs):
    model = ExtrapolatedForCausalLM(*pair, concurrent=concurrent, cpu_threads=(1, 1), **(settings or {"gamma": 0.5}))
    torch.manual_seed(0)
    with one_thread():
        return model.generate(
            PROMPTS, attention_mask=MASK, max_new_tokens=12, min_new_tokens=12, pad_token_id=0,
            output_scores=True, return_dict_in_generate=True, **kwargs,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [dict(do_sample=False), dict(do_sample=True, top_k=0), dict(do_sample=True, temperature=0.7, top_p=0.9),
     dict(num_beams=3, do_sample=False), dict(do_sample=True, top_k=0, num_return_sequences=2)],
    ids=["greedy", "sampling", "warped", "beams", "returns"],
)  # fmt: skip
def test_concurrent_equals_sequential(pair, kwargs):
    sequential, concurrent = decode(pair, False, **kwargs), decode(pair, True, **kwargs)
    assert torch.equal(sequential.sequences, concurrent.sequences)
    assert all(torch.equal(a, b) for a, b in zip(sequential.scores, concurrent.scores, strict=True))


def test_concurrent_selective_equals_sequential(pair):
    settings = dict(gamma=0.5, select="delta_logp", threshold=-0.3)
    sequential, concurrent = decode(pair, False, settings, do_sample=True), decode(pair, True, settings, do_sample=True)
    assert torch.equal(sequential.sequences, concurrent.sequences)


def test_full_mode_is_transformers_guidance(pair):
    """Independent reference: full mode with γ is classifier-free guidance with scale 1 + γ whose "unconditional"
    model is the base model reading the same prompt (transformers' own processor, run on the RL model)."""
    rl, base = pair
    prompt = PROMPTS[1:]
    for gamma in (0.5, 1.0):
        ours = ExtrapolatedForCausalLM(rl, base, gamma, concurrent=True, cpu_threads=(1, 1)).generate(
            prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        guidance = UnbatchedClassifierFreeGuidanceLogitsProcessor(1 + gamma, base, unconditional_ids=prompt)
        theirs = rl.generate(
            prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, logits_processor=[guidance],
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        assert torch.equal(ours.sequences, theirs.sequences)
        for a, b in zip(ours.scores, theirs.scores, strict=True):  # theirs: guided log-probs, not normalised
            torch.testing.assert_close(a, b.log_softmax(-1), atol=1e-4, rtol=1e-4)


def test_base_forward_runs_in_the_worker_with_its_threads(pair):
    """The base forward runs in another thread with the plan's thread count; the caller's settings come back."""
    rl, base = pair
    seen: dict[str, list] = {"rl": [], "base": []}
    hooks = [
        model.register_forward_pre_hook(lambda *_, role=role: seen[role].append(
            (threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled())))
        for role, model in (("rl", rl), ("base", base))
    ]  # fmt: skip
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    try:
        model = ExtrapolatedForCausalLM(rl, base, 0.5, concurrent=True, cpu_threads=(2, 1))
        model.generate(PROMPTS, attention_mask=MASK, max_new_tokens=3, pad_token_id=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert {s[0] for s in seen["rl"]} == {threading.get_ident()}
    assert threading.get_ident() not in {s[0] for s in seen["base"]}
    assert {s[1:] for s in seen["rl"]} == {(2, False)} and {s[1:] for s in seen["base"]} == {(1, False)}
    assert (torch.get_num_threads(), sys.getswitchinterval()) == (threads, interval)


def test_concurrent_loss_backpropagates_into_both_members():
    """Grad mode reaches the worker: a training forward's loss has gradients in both models, as sequentially."""
    grads = []
    for concurrent in (False, True):
        base = tiny_model("llama", seed=0).train()
        rl = perturbed(base).train()
        model = ExtrapolatedForCausalLM(rl, base, 0.5, concurrent=concurrent, cpu_threads=(1, 1))
        with one_thread():
            model(input_ids=PROMPTS[1:], labels=PROMPTS[1:]).loss.backward()
        grads.append([p.grad for p in (*rl.parameters(), *base.parameters())])
    assert all(g is not None for g in grads[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_an_error_in_the_base_forward_reaches_the_caller_and_restores_settings(pair):
    rl, base = pair
    hook = base.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("base model failed")))
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    try:
        model = ExtrapolatedForCausalLM(rl, base, 0.5, concurrent=True, cpu_threads=(1, 1))
        with pytest.raises(RuntimeError, match="base model failed"):
            model.generate(PROMPTS, attention_mask=MASK, max_new_tokens=3, pad_token_id=0)
    finally:
        hook.remove()
    assert (torch.get_num_threads(), sys.getswitchinterval()) == (threads, interval)
    assert model._forwards is None


def test_thread_plan_splits_the_cores():
    assert [thread_plan(n) for n in (1, 2, 3, 8)] == [(1, 1), (1, 1), (2, 1), (4, 4)]
    with pytest.raises(ValueError, match=r"cpu_threads is \(RL threads, base threads\), each ≥ 1"):
        ExtrapolatedForCausalLM(tiny_model(), tiny_model(seed=1), 0.5, cpu_threads=(2, 0))


def test_cpu_plan_splits_cores_only_between_cpu_members(pair):
    rl, base = pair
    threads = torch.get_num_threads()
    assert cpu_plan(rl, base, None) == thread_plan(threads)
    assert cpu_plan(rl, base, (3, 2)) == (3, 2)
    assert cpu_plan(rl, tiny_model(seed=2).to("meta"), None) == (threads, threads)  # the base model elsewhere


def test_pays_off_rules(pair, monkeypatch):
    rl, base = pair
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not pays_off(rl, base)  # a tiny pair on the CPU: Python-bound, concurrency would slow it
        monkeypatch.setattr(conc, "MIN_CPU_PARAMETERS", 0)
        assert pays_off(rl, base)
        torch.set_num_threads(1)
        assert not pays_off(rl, base)  # one thread: nothing to split
    finally:
        torch.set_num_threads(threads)
    assert pays_off(rl, tiny_model(seed=2).to("meta"))  # members on separate devices


def test_session_is_required():
    with pytest.raises(RuntimeError, match=r"inside `with forwards\.session"):
        ConcurrentForwards((1, 1))(lambda: 1, lambda: 2)


@pytest.mark.parametrize("kwargs", [dict(do_sample=False), dict(do_sample=True, top_k=0), dict(num_beams=3)],
                         ids=["greedy", "sampling", "beams"])  # fmt: skip
def test_static_cache_equals_dynamic(pair, kwargs):
    """``cache_implementation="static"`` (fixed shapes, for compiling the members) decodes as the dynamic cache; the
    attention over the longer, masked static cache rounds differently, by a few 1e-6."""
    dynamic, static = (
        decode(pair, False, cache_implementation=implementation, **kwargs) for implementation in ("dynamic", "static")
    )
    assert torch.equal(dynamic.sequences, static.sequences)
    for a, b in zip(dynamic.scores, static.scores, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_unsupported_cache_is_refused(pair):
    model = ExtrapolatedForCausalLM(*pair, 0.5)
    with pytest.raises(ValueError, match="cache_implementation='offloaded' is not supported"):
        model.generate(PROMPTS, attention_mask=MASK, max_new_tokens=2, pad_token_id=0, cache_implementation="offloaded")
