"""The core engine against independent references: a no-cache loop, closed forms, Monte Carlo, per-row runs.

One file: the references (the no-cache loop, the Monte Carlo sampler) serve every test of both routes here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed, tiny_model
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM, ExtrapolationConfig
from hf_extrapolate.extrapolation import combine
from hf_extrapolate.processor import generate_arguments

PROMPTS = ["12+3=", "1+1234567=", "a"]
NEW = 32


def encode(tokenizer, prompts=PROMPTS):
    return tokenizer(prompts, return_tensors="pt", padding=True)


@torch.no_grad()
def no_cache_greedy(rl, base, tokenizer, config: ExtrapolationConfig, prompts=PROMPTS, new=NEW):
    """Reference: each row alone, both models recomputed on the whole prefix at every step, argmax appended
    (and padding once the row has emitted EOS, as `generate` does)."""
    rows = []
    for prompt in prompts:
        x = tokenizer(prompt, return_tensors="pt").input_ids
        width = min(rl.config.vocab_size, base.config.vocab_size, len(tokenizer))
        new_tokens: list[int] = []
        for _ in range(new):
            if tokenizer.eos_token_id in new_tokens:
                new_tokens.append(0)
                continue
            logp, _ = combine(rl(x).logits[:, -1, :width], base(x).logits[:, -1, :width], config)
            new_tokens.append(int(logp.argmax()))
            x = torch.cat([x, torch.tensor([[new_tokens[-1]]])], dim=1)
        rows.append(torch.tensor(new_tokens))
    return torch.stack(rows)


def generate(model, enc, logits_processor=(), **kwargs):
    """``model.generate``, with a `DeltaLogpExtrapolation` through its `generate_kwargs` (the documented call)."""
    return model.generate(**generate_arguments(model, logits_processor, **enc, **kwargs))


def greedy(model, enc, **kwargs):
    """Greedy decoding of NEW tokens, padded to NEW."""
    out = generate(model, enc, do_sample=False, max_new_tokens=NEW, pad_token_id=0, **kwargs)
    return F.pad(out[:, enc.input_ids.shape[1] :], (0, NEW + enc.input_ids.shape[1] - out.shape[1]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "settings",
    [
        {"gamma": 0.5},
        {"gamma": 1.0, "select": "delta_logp", "threshold": -0.3, "temperature": 0.0},
        {"gamma": 0.3, "select": "base_entropy", "threshold": 2.0, "temperature": 0.0, "proposer": "rl"},
    ],
    ids=["full", "selective-greedy", "entropy-rl-proposer"],
)
def test_greedy_matches_no_cache_loop(arch, settings, tokenizer):
    base = tiny_model(arch, seed=0)
    rl = perturbed(base)
    ref = no_cache_greedy(rl, base, tokenizer, ExtrapolationConfig(**settings))
    enc = encode(tokenizer)
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    assert torch.equal(greedy(rl, enc, logits_processor=LogitsProcessorList([proc])), ref)
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    assert torch.equal(greedy(wrapper, enc), ref)
    assert len(set(map(tuple, ref.tolist()))) == len(PROMPTS)  # rows differ: the comparison is not vacuous


def test_gamma_zero_is_the_rl_model(pair, tokenizer):
    rl, base = pair
    enc = encode(tokenizer)
    alone = greedy(rl, enc)
    proc = DeltaLogpExtrapolation(base, gamma=0.0, tokenizer=tokenizer)
    assert torch.equal(greedy(rl, enc, logits_processor=[proc]), alone)
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.0, tokenizer=tokenizer)
    assert torch.equal(greedy(wrapper, enc), alone)
    beam = dict(num_beams=4, num_return_sequences=2)
    assert torch.equal(greedy(wrapper, enc, **beam), greedy(rl, enc, **beam))
    assert torch.equal(greedy(rl, enc, logits_processor=[proc], **beam), greedy(rl, enc, **beam))
    logits = rl(enc.input_ids, attention_mask=enc.attention_mask).logits
    expected = torch.log_softmax(logits.float(), -1)
    got = wrapper(enc.input_ids, attention_mask=enc.attention_mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_selective_respects_tokens_masked_by_other_processors(pair, tokenizer):
    """min_new_tokens masks EOS (after extrapolation, on the mixture); a base proposal of EOS must not slip through."""
    rl, base = pair
    with torch.no_grad():  # make EOS the base model's favourite token everywhere
        base_eos = perturbed(base, scale=0.0)
        base_eos.get_output_embeddings().weight[tokenizer.eos_token_id] *= 50
    enc = encode(tokenizer)
    # select="none": the mixture is the base model's distribution, so only the mask can keep EOS out
    proc = DeltaLogpExtrapolation(base_eos, gamma=0.5, select="none", tokenizer=tokenizer)
    kw = dict(logits_processor=[proc], do_sample=False, max_new_tokens=8, pad_token_id=0)
    out = generate(rl, enc, min_new_tokens=8, **kw)
    assert (out[:, -8:] != tokenizer.eos_token_id).all() and (out[:, -8:] != 0).all()  # EOS masked, not padding
    free = generate(rl, enc, **kw)
    assert (
        free[:, enc.input_ids.shape[1]] == tokenizer.eos_token_id
    ).all()  # without the mask the base would have ended at once


def test_extrapolation_changes_output(pair, tokenizer):
    rl, base = pair
    enc = encode(tokenizer)
    proc = DeltaLogpExtrapolation(base, gamma=2.0, tokenizer=tokenizer)
    assert not torch.equal(greedy(rl, enc, logits_processor=[proc]), greedy(rl, enc))


def test_beam_search_processor_wrapper_and_no_cache_agree(pair, tokenizer):
    rl, base = pair
    enc = encode(tokenizer)
    beam = dict(num_beams=3, num_return_sequences=3, output_scores=True, return_dict_in_generate=True)
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.7, tokenizer=tokenizer)
    no_cache = wrapper.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0, use_cache=False, **beam)
    cached = wrapper.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0, **beam)
    proc = DeltaLogpExtrapolation(base, gamma=0.7, tokenizer=tokenizer)
    via_proc = generate(rl, enc, do_sample=False, max_new_tokens=12, pad_token_id=0, logits_processor=[proc], **beam)
    assert torch.equal(cached.sequences, no_cache.sequences)
    assert torch.equal(via_proc.sequences, no_cache.sequences)
    torch.testing.assert_close(via_proc.sequences_scores, no_cache.sequences_scores, rtol=0, atol=1e-4)


def test_processor_reuse_sampling_and_num_return_sequences(pair, tokenizer):
    rl, base = pair
    enc = encode(tokenizer)
    proc = DeltaLogpExtrapolation(base, gamma=0.5, tokenizer=tokenizer)
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tokenizer)
    kw = dict(do_sample=True, max_new_tokens=16, pad_token_id=0, num_return_sequences=2, top_p=0.9)
    outs = []
    for model, extra in ((rl, {"logits_processor": [proc]}), (wrapper, {}), (rl, {"logits_processor": [proc]})):
        torch.manual_seed(7)
        outs.append(generate(model, enc, **kw, **extra))
    assert outs[0].shape[0] == 2 * len(PROMPTS)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # a different prompt with the same processor object: cache rebuilt, still matches the reference
    other = encode(tokenizer, ["9*9=", "77"])
    ref = no_cache_greedy(rl, base, tokenizer, ExtrapolationConfig(gamma=0.5), ["9*9=", "77"])
    assert torch.equal(greedy(rl, other, logits_processor=[proc]), ref)


def test_batch_equals_rows_alone(pair, tokenizer):
    rl, base = pair
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5, select="delta_logp", threshold=-0.2, tokenizer=tokenizer)
    enc = encode(tokenizer)
    batched = wrapper(enc.input_ids, attention_mask=enc.attention_mask).logits
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        alone = wrapper(ids).logits[0]
        torch.testing.assert_close(batched[i, -ids.shape[1] :], alone, rtol=0, atol=1e-5)


# -- the selective distribution -----------------------------------------------------------------------


def reference_top_p(p: list[float], top_p: float) -> list[float]:
    """Keep the most probable tokens until their mass reaches top_p (the crossing token included)."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += p[i]
        if mass >= top_p:
            break
    z = sum(p[i] for i in keep)
    return [p[i] / z if i in keep else 0.0 for i in range(len(p))]


def reference_selective(rl_logits, base_logits, gamma, tau, temperature, top_p):
    """Closed form of the two-stage sampler with plain Python floats, written from docs/PAPER.md §2."""
    lse = lambda xs: math.log(sum(math.exp(v) for v in xs))  # noqa: E731
    lr = [v - lse(rl_logits) for v in rl_logits]
    lb = [v - lse(base_logits) for v in base_logits]
    soft = lambda xs: [math.exp(v / temperature - lse([u / temperature for u in xs])) for v in xs]  # noqa: E731
    prop = reference_top_p(soft(lb), top_p)
    x_logits = [(1 + gamma) * r - gamma * b for r, b in zip(lr, lb)]
    px = reference_top_p(soft(x_logits), top_p)
    flagged = [r - b <= tau for r, b in zip(lr, lb)]
    m = sum(p for p, f in zip(prop, flagged) if f)
    return [p * (not f) + m * q for p, f, q in zip(prop, flagged, px)], prop, px, flagged


def test_selective_matches_closed_form_and_monte_carlo():
    torch.manual_seed(0)
    rl_logits, base_logits = torch.randn(2, 12) * 2
    gamma, tau, temperature, top_p = 0.5, -0.3, 0.8, 0.9
    cfg = ExtrapolationConfig(gamma=gamma, select="delta_logp", threshold=tau, temperature=temperature, top_p=top_p)
    logp, (m, changed) = combine(rl_logits[None], base_logits[None], cfg)
    ref, prop, px, flagged = reference_selective(
        rl_logits.tolist(), base_logits.tolist(), gamma, tau, temperature, top_p
    )
    assert 0 < sum(flagged) < 12  # some tokens flagged, some not
    torch.testing.assert_close(logp.exp()[0], torch.tensor(ref), rtol=0, atol=1e-6)
    assert m.item() == pytest.approx(sum(p for p, f in zip(prop, flagged) if f), abs=1e-6)
    assert changed.item() == pytest.approx(sum(p * (1 - q) for p, f, q in zip(prop, flagged, px) if f), abs=1e-6)
    assert changed.item() <= m.item()  # a redraw can give the proposed token back (not here: top-p cuts them)

    # Monte Carlo of the two-stage algorithm itself: propose, flag, resample
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    proposals = torch.multinomial(torch.tensor(prop), n, replacement=True, generator=gen)
    resampled = torch.multinomial(torch.tensor(px), n, replacement=True, generator=gen)
    emitted = torch.where(torch.tensor(flagged)[proposals], resampled, proposals)
    empirical = torch.bincount(emitted, minlength=12).float() / n
    tv = 0.5 * (empirical - logp.exp()[0]).abs().sum().item()
    assert tv < 0.01, f"total variation {tv:.4f} above the bound 0.01 (expected ~0.003 for n=200k, 12 tokens)"
    was_flagged = torch.tensor(flagged)[proposals]
    assert was_flagged.float().mean().item() == pytest.approx(m.item(), abs=0.005)  # 5 sigma at n=200k
    assert (emitted != proposals).float().mean().item() == pytest.approx(changed.item(), abs=0.005)


@pytest.mark.parametrize("select", ["base_entropy", "rl_entropy", "kl", "reverse_kl", "js", "random", "all", "none"])
def test_position_criteria_mix_proposer_and_extrapolated(select):
    torch.manual_seed(3)
    rl_logits, base_logits = torch.randn(2, 4, 10)
    lr, lb = rl_logits.log_softmax(-1), base_logits.log_softmax(-1)
    ent = lambda lp: -(lp.exp() * lp).sum(-1)  # noqa: E731
    kl_rb, kl_br = (lr.exp() * (lr - lb)).sum(-1), (lb.exp() * (lb - lr)).sum(-1)
    stat = {"base_entropy": ent(lb), "rl_entropy": ent(lr), "kl": kl_rb, "reverse_kl": kl_br,
            "js": (kl_rb + kl_br) / 2}.get(select)  # fmt: skip
    tau = 0.3 if select == "random" else (stat.median().item() if stat is not None else None)
    cfg = ExtrapolationConfig(gamma=0.4, select=select, threshold=tau)
    logp, (m, _) = combine(rl_logits, base_logits, cfg)
    f = {"random": torch.full((4,), 0.3), "all": torch.ones(4), "none": torch.zeros(4)}.get(select)
    f = (stat >= tau).float() if f is None else f
    px = (1.4 * lr - 0.4 * lb).softmax(-1)
    expected = (1 - f)[:, None] * lb.exp() + f[:, None] * px
    torch.testing.assert_close(logp.exp(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(m, f, rtol=0, atol=1e-6)


def test_greedy_selective_rule():
    torch.manual_seed(5)
    rl_logits, base_logits = torch.randn(2, 64, 9) * 2
    cfg = ExtrapolationConfig(gamma=1.0, select="delta_logp", threshold=-0.2, temperature=0)
    logp, (m, changed) = combine(rl_logits, base_logits, cfg)
    lr, lb = rl_logits.log_softmax(-1), base_logits.log_softmax(-1)
    proposal = lb.argmax(-1)
    flagged = (lr - lb).gather(-1, proposal[:, None])[:, 0] <= -0.2
    expected = torch.where(flagged, (2 * lr - lb).argmax(-1), proposal)
    assert torch.equal(logp.argmax(-1), expected)
    assert torch.equal(logp.exp().sum(-1), torch.ones(64)) and torch.equal(m, flagged.float())
    assert torch.equal(changed, (flagged & (expected != proposal)).float())
    assert 0 < flagged.sum() < 64


def test_candidate_top_k_matches_reference_code_formula():
    """Where both sampling nuclei fit in the top-k, the reference code's π_X is the proposer's top-k with the
    other side padded with its smallest top-k log-prob (tests/test_reference_mode.py covers wider nuclei)."""
    torch.manual_seed(2)
    rl_logits, base_logits = torch.randn(2, 30) * 3
    k, w_base, w_rl, top_p = 5, -0.5, 1.5, 0.5
    cfg = ExtrapolationConfig(weights=(w_base, w_rl), select="all", candidate_top_k=k, top_p=top_p)
    logp, _ = combine(rl_logits[None], base_logits[None], cfg)
    lb, lr = base_logits.log_softmax(-1).tolist(), rl_logits.log_softmax(-1).tolist()
    assert max(len([p for p in reference_top_p(F.softmax(t, -1).tolist(), top_p) if p > 0])
               for t in (rl_logits, base_logits)) <= k  # fmt: skip
    top_b = sorted(range(30), key=lambda i: -lb[i])[:k]
    top_r = dict(sorted(((i, lr[i]) for i in range(30)), key=lambda kv: -kv[1])[:k])
    pad = min(top_r.values())
    mixed = {i: w_base * lb[i] + w_rl * top_r.get(i, pad) for i in top_b}
    z = sum(math.exp(v) for v in mixed.values())
    on_list = reference_top_p([math.exp(mixed[i]) / z for i in top_b], top_p)
    expected = [on_list[top_b.index(i)] if i in top_b else 0.0 for i in range(30)]
    torch.testing.assert_close(logp.exp()[0], torch.tensor(expected), rtol=0, atol=1e-6)


# -- vocabularies, masks, dtypes, devices --------------------------------------------------------------


def test_padded_vocabularies_never_emit_padding_ids(tokenizer):
    base = tiny_model(vocab_size=112, seed=0)  # embedding padded past the tokenizer's 103 tokens
    rl = perturbed(base, vocab_size=128)
    with torch.no_grad():  # make the padding rows the most attractive tokens of the RL model
        rl.get_output_embeddings().weight[103:] *= 0
        rl.get_output_embeddings().bias = None
    enc = encode(tokenizer)
    for settings in ({"gamma": 1.0}, {"gamma": 1.0, "select": "delta_logp", "threshold": -0.1}):
        proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
        torch.manual_seed(0)
        out = generate(rl, enc, logits_processor=[proc], do_sample=True, max_new_tokens=24, pad_token_id=0)
        assert out.max() < len(tokenizer)
        wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
        logits = wrapper(enc.input_ids).logits
        assert logits.shape[-1] == 128 and torch.isneginf(logits[..., 103:]).all()
        assert not logits[..., :103].isnan().any()


def test_masked_entries_stay_finite_or_minus_inf():
    rl = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]])
    base = torch.tensor([[float("-inf"), 1.0, 0.5, float("-inf"), 0.0]])
    for cfg in (ExtrapolationConfig(gamma=2.0), ExtrapolationConfig(gamma=2.0, select="delta_logp", threshold=-0.1),
                ExtrapolationConfig(gamma=2.0, select="js", threshold=0.0)):  # fmt: skip
        logp, _ = combine(rl, base, cfg)
        assert not logp.isnan().any() and not torch.isposinf(logp).any()
        assert torch.isneginf(logp[0, 2])  # masked on the RL side stays masked
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_low_precision_base_is_combined_in_fp32(pair, tokenizer):
    rl, base = pair
    base16 = AutoModelForCausalLM.from_config(base.config, dtype=torch.bfloat16).eval()
    base16.load_state_dict(base.state_dict())
    enc = encode(tokenizer)
    wrapper = ExtrapolatedForCausalLM(rl, base16, gamma=0.5, tokenizer=tokenizer)
    logits = wrapper(enc.input_ids, attention_mask=enc.attention_mask).logits
    assert logits.dtype == torch.float32
    reference = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tokenizer)
    expected = reference(enc.input_ids, attention_mask=enc.attention_mask).logits
    assert (logits - expected).abs().max() < 0.2  # bf16 rounding of the base logits only
    proc = DeltaLogpExtrapolation(base16, gamma=0.5, tokenizer=tokenizer)
    proc.generate_kwargs(rl, **enc)  # hands the processor the batch's attention mask
    scores = proc(enc.input_ids, rl(enc.input_ids, attention_mask=enc.attention_mask).logits[:, -1])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


# -- save / load ---------------------------------------------------------------------------------------


def test_save_load_round_trip(pair, tokenizer, tmp_path):
    rl, base = pair
    settings = dict(gamma=0.3, select="delta_logp", threshold=-0.25, top_p=0.9, candidate_top_k=20)
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    wrapper.save_pretrained(tmp_path / "pair")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pair", trust_remote_code=True)
    assert type(loaded) is ExtrapolatedForCausalLM
    assert loaded.extrapolation == wrapper.extrapolation
    enc = encode(tokenizer)
    a = wrapper(enc.input_ids, attention_mask=enc.attention_mask).logits
    b = loaded(enc.input_ids, attention_mask=enc.attention_mask).logits
    assert torch.equal(a, b)
    # settings can be overridden at load time, and loading options reach both models
    other = AutoModelForCausalLM.from_pretrained(
        tmp_path / "pair", trust_remote_code=True, gamma=0.0, select=None, dtype=torch.bfloat16
    )
    assert other.extrapolation.gamma == 0.0 and other.rl.dtype == other.base.dtype == torch.bfloat16


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gamma": float("nan")}, "gamma must be finite"),
        ({"gamma": "0.5"}, "gamma must be a real number"),
        ({"gamma": True}, "gamma must be a real number"),
        ({"select": "entropy", "threshold": 1.0}, "unknown select criterion 'entropy'"),
        ({"select": "random", "threshold": 1.5}, "in [0, 1]"),
        ({"select": "delta_logp"}, "needs a threshold"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"proposer": "policy"}, "proposer must be 'base' or 'rl'"),
        ({"candidate_top_k": 0}, "candidate_top_k must be a positive integer"),
        ({"weights": (1.0,)}, "weights must be a pair"),
    ],
)
def test_bad_settings_get_one_clear_error(pair, settings, message):
    rl, base = pair
    with pytest.raises(ValueError) as err:
        DeltaLogpExtrapolation(base, **settings)
    assert message in str(err.value)
    with pytest.raises(ValueError):
        ExtrapolatedForCausalLM(rl, base, **settings)


def test_mismatched_tokenizers_are_refused(pair, tokenizer):
    rl, base = pair
    vocab = tokenizer.get_vocab()
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[])))
    with pytest.raises(ValueError, match=r"tokenizers of .* disagree"):
        ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, base_tokenizer=swapped)


def test_wrapper_refuses_inputs_embeds_and_foreign_caches(pair):
    rl, base = pair
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5)
    with pytest.raises(ValueError, match="takes input_ids"):
        wrapper(inputs_embeds=torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="must be a PairCache"):
        wrapper(torch.tensor([[5, 6]]), cache=DynamicCache())


def test_assisted_decoding_rollbacks_keep_the_processor_exact(pair, tokenizer):
    """Assisted decoding scores draft tokens, then rolls back the rejected ones: the base cache must follow."""
    rl, base = pair
    draft = perturbed(rl, scale=0.5, seed=3)  # a draft model that is often wrong, so rollbacks happen
    prompt = ["1+1234567="]
    ref = no_cache_greedy(rl, base, tokenizer, ExtrapolationConfig(gamma=0.5), prompt)
    proc = DeltaLogpExtrapolation(base, gamma=0.5, tokenizer=tokenizer)
    enc = encode(tokenizer, prompt)
    assert torch.equal(greedy(rl, enc, logits_processor=[proc], assistant_model=draft), ref)


def test_rates_count_emitting_rows_across_calls(pair, tokenizer):
    rl, base = pair
    enc = encode(tokenizer)
    for select, threshold, expected in (("all", None, 1.0), ("none", None, 0.0), ("random", 0.3, 0.3)):
        proc = DeltaLogpExtrapolation(base, select=select, threshold=threshold, tokenizer=tokenizer)
        for _ in range(2):  # a second call with the same processor adds to the same statistics
            generate(rl, enc, logits_processor=[proc], do_sample=True, max_new_tokens=6, pad_token_id=0)
        assert proc.resample_rate == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= proc.changed_rate <= proc.resample_rate
    proc = DeltaLogpExtrapolation(base, gamma=0.5, select="delta_logp", threshold=-0.3, tokenizer=tokenizer)
    greedy(rl, enc, logits_processor=[proc])
    assert 0.0 < proc.resample_rate < 1.0
    proc.reset()
    assert proc.resample_rate is None and proc.changed_rate is None
    assert DeltaLogpExtrapolation(base, gamma=0.5).resample_rate is None


def test_wrapper_reports_the_rates_the_processor_accumulates(pair, tokenizer):
    """Teacher-forced through the wrapper, a sampled sequence's per-position rates average to the processor's."""
    rl, base = pair
    settings = {"gamma": 0.5, "select": "delta_logp", "threshold": -0.3, "top_p": 0.9}
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    enc = encode(tokenizer, ["12+3="])
    torch.manual_seed(0)
    out = generate(rl, enc, [proc], do_sample=True, max_new_tokens=24, pad_token_id=0)
    prompt, new = enc.input_ids.shape[1], out.shape[1] - enc.input_ids.shape[1]
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    with torch.no_grad():
        res = wrapper(out)
    steps = slice(prompt - 1, prompt - 1 + new)  # the positions that predicted each generated token
    assert res.resampled.shape == out.shape and 0.0 < proc.resample_rate < 1.0
    assert res.resampled[0, steps].mean().item() == pytest.approx(proc.resample_rate, abs=1e-6)
    assert res.changed[0, steps].mean().item() == pytest.approx(proc.changed_rate, abs=1e-6)
    assert ExtrapolatedForCausalLM(rl, base, gamma=0.5)(out).resampled is None  # full mode: no rates


def test_wrapper_returns_the_rl_models_hidden_states(pair, tokenizer):
    """`output_hidden_states` reaches the RL model (the pair's tokenizer and config are its own); off by default."""
    rl, base = pair
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tokenizer)
    enc = tokenizer(["12+3=", "1+1234567="], return_tensors="pt", padding=True)
    positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: the wrapper counts real tokens
    out, ref = wrapper(**enc, output_hidden_states=True), rl(**enc, position_ids=positions, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == rl.config.num_hidden_layers + 1
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))
    assert wrapper(**enc).hidden_states is None


def test_wrapper_gathers_its_members_properties_and_keeps_their_weights(tokenizer):
    """`post_init` runs (the `PreTrainedModel` contract): the members' no-split layers and tied keys reach the
    wrapper (what `device_map="auto"` and saving read), and no member weight is re-initialised, not even in a member
    whose modules carry no "initialised" flag."""
    config = tiny_model("gpt2").config
    config.tie_word_embeddings = True
    rl, base = tiny_model(seed=0), AutoModelForCausalLM.from_config(config)
    for module in base.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    before = {f"{name}.{k}": v.clone() for name, m in (("rl", rl), ("base", base)) for k, v in m.state_dict().items()}
    wrapper = ExtrapolatedForCausalLM(rl, base, gamma=0.5)
    assert {"LlamaDecoderLayer", "GPT2Block"} <= set(wrapper._no_split_modules)
    assert wrapper.all_tied_weights_keys == {"base.lm_head.weight": "base.transformer.wte.weight"}
    assert all(torch.equal(v, before[k]) for k, v in wrapper.state_dict().items())
