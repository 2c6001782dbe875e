"""The two decoding routes under real generation configs, against a no-cache loop with penalties written out here.

The RL model carries a Qwen-style generation config (temperature 0.7, top-p 0.8, top-k 20, repetition penalty
1.05, sampling on): neither route may apply it on top of the extrapolation. One file: the penalised no-cache
reference serves every test.
"""

from __future__ import annotations

import threading

import pytest
import torch
import transformers
from conftest import perturbed, tiny_model
from packaging.version import Version
from transformers import AutoModelForCausalLM, GenerationConfig

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolatedForCausalLM, ExtrapolationConfig
from hf_extrapolate.extrapolation import combine

PAD, EOS = 0, 2
QWEN = dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, do_sample=True)
SELECTIVE = {"gamma": 0.5, "select": "delta_logp", "threshold": -0.3}
MODES = {"full": {"gamma": 0.5}, "selective": SELECTIVE}


def qwen_style(model):
    """A copy of ``model`` whose generation config is a Qwen-style one."""
    other = perturbed(model, scale=0.0)
    other.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, **QWEN)
    return other


@pytest.fixture(scope="module")
def models():
    """(rl, base) tiny Llamas; the RL model has the Qwen-style generation config."""
    base = tiny_model("llama", seed=0)
    return qwen_style(perturbed(base)), base


def rows_of(tokenizer, prompts):
    return [tokenizer(p).input_ids for p in prompts]


def left_pad(rows, pad):
    """A left-padded batch and its attention mask (rows as lists of ids)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def penalise(scores, seq, step, repetition_penalty=None, no_repeat_ngram_size=None, sequence_bias=None,
             bad_words_ids=None, min_new_tokens=None, eos_token_id=EOS):  # fmt: skip
    """The penalties from their definitions, on one row's scores given its whole sequence ``seq``."""
    s = scores.clone()
    if sequence_bias:
        for key, bias in sequence_bias.items():
            if len(key) == 1 or seq[-(len(key) - 1) :] == list(key[:-1]):
                s[key[-1]] += bias
    if repetition_penalty:
        for t in set(seq):
            s[t] = s[t] * repetition_penalty if s[t] < 0 else s[t] / repetition_penalty
    if no_repeat_ngram_size:
        n = no_repeat_ngram_size
        for i in range(len(seq) - n + 1):
            if seq[i : i + n - 1] == seq[len(seq) - n + 1 :]:
                s[seq[i + n - 1]] = float("-inf")
    if bad_words_ids:
        for word in bad_words_ids:
            if len(word) == 1 or seq[-(len(word) - 1) :] == word[:-1]:
                s[word[-1]] = float("-inf")
    if min_new_tokens and step < min_new_tokens:
        s[eos_token_id] = float("-inf")
    return s


@torch.no_grad()
def reference(rl, base, config, rows, new, pad=PAD, **penalties):
    """Each row alone, both models recomputed on the whole prefix at every step, the penalties applied to the
    extrapolated log-probs, argmax appended; ``pad`` once the row has emitted EOS (as `generate` does)."""
    out, eos = [], penalties.get("eos_token_id", EOS)
    for row in rows:
        generated: list[int] = []
        for step in range(new):
            if eos in generated:
                generated.append(pad)
                continue
            x = torch.tensor([row + generated])
            logp, _ = combine(rl(x).logits[0, -1], base(x).logits[0, -1], config)
            generated.append(int(penalise(logp, row + generated, step, **penalties).argmax()))
        out.append(generated)
    return torch.tensor(out)


@torch.no_grad()
def exact_scores(rl, base, config, row, generated):
    """log P of every next token along ``generated`` (row alone, no cache), as `generate` should sample it."""
    out = []
    for t in range(len(generated)):
        x = torch.tensor([row + generated[:t]])
        out.append(combine(rl(x).logits[0, -1], base(x).logits[0, -1], config)[0])
    return out


def processor_generate(rl, proc, enc, **kwargs):
    return rl.generate(**proc.generate_kwargs(rl, **enc, **kwargs))


def new_tokens(out, enc):
    return out[:, enc["input_ids"].shape[1] :]


def assert_sampled_exactly(out, enc, rows, rl, base, config):
    """The scores `generate` sampled from (after every warper) are the exact distribution, nothing cut."""
    generated = new_tokens(out.sequences, enc)
    for i, row in enumerate(rows):
        gen = generated[i].tolist()
        gen = gen[: gen.index(EOS) + 1] if EOS in gen else gen
        for t, expected in enumerate(exact_scores(rl, base, config, row, gen)):
            got = out.scores[t][i]
            assert torch.equal(torch.isneginf(got), torch.isneginf(expected)), (i, t)  # the same support
            torch.testing.assert_close(got.exp(), expected.exp(), rtol=0, atol=1e-5)


# -- one owner for every sampling setting --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_generate_samples_the_exact_distribution_under_a_qwen_config(models, tokenizer, mode, tmp_path):
    rl, base = models
    settings = MODES[mode]
    prompts = ["12+3=", "1+1234567="]
    rows, enc = rows_of(tokenizer, prompts), tokenizer(prompts, return_tensors="pt", padding=True)
    run = dict(max_new_tokens=6, output_scores=True, return_dict_in_generate=True, pad_token_id=PAD)
    config = ExtrapolationConfig(**settings)
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    assert wrapper.generation_config.do_sample and wrapper.generation_config.top_k is None
    torch.manual_seed(0)
    assert_sampled_exactly(wrapper.generate(**enc, **run), enc, rows, rl, base, config)
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    torch.manual_seed(0)
    assert_sampled_exactly(processor_generate(rl, proc, enc, **run), enc, rows, rl, base, config)
    if mode == "selective":  # temperature / top-p given to the wrapper's generate are the sampler's, this call only
        torch.manual_seed(0)
        out = wrapper.generate(**enc, temperature=0.8, top_p=0.9, top_k=0, **run)
        flowed = ExtrapolationConfig(**settings, temperature=0.8, top_p=0.9)
        assert_sampled_exactly(out, enc, rows, rl, base, flowed)
        assert wrapper.extrapolation == config
        # a saved folder, reloaded, holding the RL model's own generation config: still neutral at generate time
        wrapper.save_pretrained(tmp_path / "pair")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pair", trust_remote_code=True)
        loaded.generation_config = rl.generation_config
        torch.manual_seed(0)
        assert_sampled_exactly(loaded.generate(**enc, **run), enc, rows, rl, base, config)


def test_settings_that_would_warp_twice_are_refused(models, tokenizer):
    rl, base = models
    enc = tokenizer(["12+3="], return_tensors="pt")
    selective = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **SELECTIVE)
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, top_p=0.9, **SELECTIVE)
    for call in (lambda **kw: selective.generate(**enc, **kw), lambda **kw: proc.generate_kwargs(rl, **enc, **kw)):
        for cut in ({"top_k": 20}, {"min_p": 0.1}, {"typical_p": 0.9}):
            with pytest.raises(ValueError, match=f"{next(iter(cut))}=.* would cut"):
                call(max_new_tokens=2, **cut)
    with pytest.raises(ValueError, match=r"set temperature=0.7 on DeltaLogpExtrapolation"):
        proc.generate_kwargs(rl, **enc, temperature=0.7)
    proc.generate_kwargs(rl, **enc, temperature=1.0, top_p=0.9, top_k=0)  # neutral, or the processor's own: fine
    full = ExtrapolatedForCausalLM(rl, base, gamma=0.5, temperature=0.8, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="temperature is set twice"):
        full.generate(**enc, temperature=0.7, max_new_tokens=2)
    greedy_variant = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **SELECTIVE, temperature=0.0)
    with pytest.raises(ValueError, match=r"with temperature=0 .* no_repeat_ngram_size=2"):
        greedy_variant.generate(**enc, no_repeat_ngram_size=2, max_new_tokens=2)


# -- penalties: once, after extrapolation, the same on both routes -------------------------------------------

PENALTIES = {
    "repetition_penalty": {"repetition_penalty": 1.5},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
    "sequence_bias": {"sequence_bias": {(5,): 2.5, (9, 10): -4.0}},
    "bad_words_ids": {"bad_words_ids": [[94], [79]]},
    "min_new_tokens": {"min_new_tokens": 10, "eos_token_id": 21},  # 21: the first token of two rows, in both modes
}
# before 5.23, `generate` counts a row's left padding as context for repetition_penalty, so that a padded batch differs
# from its rows alone with the RL model alone too: the reference (rows alone) holds from 5.23 on
PADDING_COUNTS = Version(transformers.__version__) < Version("5.23")


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("mode", MODES)
def test_penalties_apply_once_after_extrapolation(models, tokenizer, mode, penalty):
    if penalty == "repetition_penalty" and PADDING_COUNTS:
        pytest.skip(f"transformers {transformers.__version__} penalizes left padding as context (fixed in 5.23)")
    rl, base = models
    settings, kwargs = MODES[mode], PENALTIES[penalty]
    prompts = ["12+3=", "1+1234567=", "a"]
    rows, enc = rows_of(tokenizer, prompts), tokenizer(prompts, return_tensors="pt", padding=True)
    new = 12
    expected = reference(rl, base, ExtrapolationConfig(**settings), rows, new, **kwargs)
    assert not torch.equal(expected, reference(rl, base, ExtrapolationConfig(**settings), rows, new))  # it bites
    wrapper = ExtrapolatedForCausalLM(rl, base, tokenizer=tokenizer, **settings)
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **settings)
    run = dict(max_new_tokens=new, min_length=0, pad_token_id=PAD, **kwargs)
    greedy = [new_tokens(g, enc) for g in (wrapper.generate(**enc, do_sample=False, **run),
                                            processor_generate(rl, proc, enc, do_sample=False, **run))]  # fmt: skip
    for out in greedy:
        assert torch.equal(torch.nn.functional.pad(out, (0, new - out.shape[1]), value=PAD), expected)
    sampled = []
    for route in (lambda: wrapper.generate(**enc, do_sample=True, **run),
                  lambda: processor_generate(rl, proc, enc, do_sample=True, **run)):  # fmt: skip
        torch.manual_seed(3)
        sampled.append(route())
    assert torch.equal(sampled[0], sampled[1])


# -- padding: known, not guessed -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no pad id known", "padded with EOS", "prompt starts with the pad token"])
def test_a_batch_equals_its_rows_alone(tokenizer, case):
    base = tiny_model("gpt2", seed=0)  # absolute positions: padding mistakes show
    rl = perturbed(base)
    rows = rows_of(tokenizer, ["12+3=", "1+1234567=", "a"])
    pad = EOS if case == "padded with EOS" else PAD
    if case == "prompt starts with the pad token":
        rows = [[PAD, *r] for r in rows]
    if case == "no pad id known":
        base.generation_config.pad_token_id = rl.generation_config.pad_token_id = None
    settings = {"gamma": 1.0, "select": "delta_logp", "threshold": -0.3, "temperature": 0.0}
    expected = reference(rl, base, ExtrapolationConfig(**settings), rows, 10, pad=pad)
    enc = left_pad(rows, pad)
    proc = DeltaLogpExtrapolation(base, **settings)  # no tokenizer: the processor knows no pad id
    run = dict(do_sample=False, max_new_tokens=10, pad_token_id=pad, eos_token_id=EOS)
    assert torch.equal(new_tokens(processor_generate(rl, proc, enc, **run), enc), expected)
    wrapper = ExtrapolatedForCausalLM(rl, base, **settings)
    assert torch.equal(new_tokens(wrapper.generate(**enc, **run), enc), expected)
    with pytest.raises(ValueError, match="does not know the attention mask of this batch of 3 rows"):
        rl.generate(**enc, logits_processor=[DeltaLogpExtrapolation(base, **settings)], **run)
    with pytest.raises(ValueError, match="needs the attention_mask of a batch of 3 prompts"):
        proc.generate_kwargs(rl, input_ids=enc["input_ids"])


def test_processor_refuses_scores_masked_before_it(models, tokenizer):
    rl, base = models
    enc = tokenizer(["12+3="], return_tensors="pt")
    proc = DeltaLogpExtrapolation(base, gamma=0.5, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="already masked by another processor"):
        rl.generate(**enc, logits_processor=[proc], min_new_tokens=4, max_new_tokens=4, do_sample=False)


# -- non-finite logits ---------------------------------------------------------------------------------------


def broken(model, how):
    """A copy of ``model`` with a NaN lm_head, or one logit forced to +inf."""
    other = perturbed(model, scale=0.0)
    head = other.get_output_embeddings()
    if how == "nan":
        with torch.no_grad():
            head.weight[7] = float("nan")
    else:
        head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([5]), float("inf")))
    return other


@pytest.mark.parametrize("how", ["nan", "inf"])
@pytest.mark.parametrize("which", ["base", "RL"])
def test_non_finite_logits_are_refused_naming_the_model(models, tokenizer, how, which):
    rl, base = models
    rl, base = (broken(rl, how), base) if which == "RL" else (rl, broken(base, how))
    enc = tokenizer(["12+3=", "9*9="], return_tensors="pt", padding=True)
    message = rf"the {which} model's logits at generation step 0 hold (NaN|\+inf)"
    for settings in ({"gamma": 0.5}, {**SELECTIVE, "temperature": 0.0}):
        with pytest.raises(ValueError, match=message):
            ExtrapolatedForCausalLM(rl, base, **settings).generate(**enc, max_new_tokens=3, do_sample=False)
        with pytest.raises(ValueError, match=message):
            processor_generate(rl, DeltaLogpExtrapolation(base, **settings), enc, max_new_tokens=3, do_sample=False)
    with pytest.raises(ValueError, match=rf"the {which} model's logits at positions 0\.\.\d+ hold (NaN|\+inf)"):
        ExtrapolatedForCausalLM(rl, base, gamma=0.5)(**enc)  # a plain forward (log-likelihoods) too


# -- threads -------------------------------------------------------------------------------------------------


def test_one_processor_shared_by_two_threads(models, tokenizer):
    rl, base = models
    proc = DeltaLogpExtrapolation(base, tokenizer=tokenizer, **SELECTIVE, temperature=0.0)
    batches = [tokenizer(p, return_tensors="pt", padding=True) for p in (["12+3=", "1+1234567=", "a"], ["9*9=", "77"])]
    run = dict(do_sample=False, max_new_tokens=12, pad_token_id=PAD)
    alone = [processor_generate(rl, proc, enc, **run) for enc in batches]
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            for _ in range(3):
                results[i].append(processor_generate(rl, proc, batches[i], **run))
        except BaseException as err:  # reported below: a failing thread must fail the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        assert len(results[i]) == 3 and all(torch.equal(out, alone[i]) for out in results[i])
