"""The paper's training-time reweighting: the weights, and their effect on TRL's GRPO loss."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from hf_extrapolate.training import (
    DirectionalGRPOConfig,
    DirectionalGRPOTrainer,
    direction_weights,
    dominate_weights,
)

C = 0.2


def test_direction_weights_formula():
    probs = [1.0, 0.9, 0.5, 0.1, 1e-6]
    got = direction_weights(torch.tensor(probs).log(), C)
    want = torch.tensor([1 + C - C * p for p in probs])
    torch.testing.assert_close(got, want)
    assert got[0].item() == pytest.approx(1.0) and got[-1].item() == pytest.approx(1 + C)


def test_dominate_weights_formula():
    probs = [1.0, 0.5, 0.0]
    got = dominate_weights(torch.tensor(probs).log(), C)
    torch.testing.assert_close(got, torch.tensor([C * p + 1 - C for p in probs]))


def _trainer(cls, tokenizer, tmp_path, model=None, **reweighting):
    """A trainer of ``cls`` (on a fresh `tiny_model` unless ``model``); ``reweighting`` (reweight, reweight_c) makes
    its config a DirectionalGRPOConfig."""
    config = DirectionalGRPOConfig if reweighting else GRPOConfig
    args = config(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, **reweighting,
    )  # fmt: skip
    data = Dataset.from_list([{"prompt": "1+1="}] * 4)
    return cls(
        model=model or tiny_model(), reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
        train_dataset=data, processing_class=tokenizer,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trainers(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpo")
    made = {
        "plain": _trainer(GRPOTrainer, tokenizer, tmp),
        "none": _trainer(DirectionalGRPOTrainer, tokenizer, tmp, reweight=None),
        "c0": _trainer(DirectionalGRPOTrainer, tokenizer, tmp, reweight="direction", reweight_c=0.0),
        "direction": _trainer(DirectionalGRPOTrainer, tokenizer, tmp, reweight="direction", reweight_c=C),
        "dominate": _trainer(DirectionalGRPOTrainer, tokenizer, tmp, reweight="dominate", reweight_c=C),
    }
    for t in made.values():
        t.model.eval()  # no gradient-accumulation scaling, so the losses compare directly
    return made


def _batch(advantages: list[float], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(advantages)
    completion_mask = torch.ones(n, 6, dtype=torch.long)
    completion_mask[0, 4:] = 0  # one shorter completion: padding must not count
    return {
        "prompt_ids": torch.randint(6, 103, (n, 5), generator=g),
        "prompt_mask": torch.ones(n, 5, dtype=torch.long),
        "completion_ids": torch.randint(6, 103, (n, 6), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages),
        "num_items_in_batch": completion_mask.sum(),
    }


def _token_probs(model, batch: dict) -> torch.Tensor:
    """π(y_t) of each completion token, computed here from the logits (independently of TRL)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    k = batch["completion_ids"].size(1)
    logp = logits[:, -k:].log_softmax(-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return logp.exp()


def _loss(trainer, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return trainer._compute_loss(trainer.model, dict(batch))


ADVANTAGES = [1.0, -0.5, 0.8, -1.3]


def test_no_reweight_equals_grpo(trainers):
    batch = _batch(ADVANTAGES)
    plain = _loss(trainers["plain"], batch)
    assert torch.equal(_loss(trainers["none"], batch), plain)
    assert torch.equal(_loss(trainers["c0"], batch), plain)


@pytest.mark.parametrize("kind", ["direction", "dominate"])
def test_reweighted_loss_matches_formula(trainers, kind):
    """On-policy (ratio 1) the DAPO loss is −Σ A·w / N: check it against weights computed here."""
    batch = _batch(ADVANTAGES)
    p = _token_probs(trainers[kind].model, batch)
    w = 1 + C - C * p if kind == "direction" else C * p + 1 - C
    mask = batch["completion_mask"].float()
    want = -(batch["advantages"][:, None] * w * mask).sum() / mask.sum()
    torch.testing.assert_close(_loss(trainers[kind], batch), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reweighting_direction(trainers, sign):
    """Direction weights (≥ 1) push every token harder than plain GRPO; dominate weights (≤ 1) less hard."""
    batch = _batch([sign] * 4)
    plain = _loss(trainers["plain"], batch).item()
    assert plain == pytest.approx(-sign)
    direction, dominate = _loss(trainers["direction"], batch).item(), _loss(trainers["dominate"], batch).item()
    assert sign * direction < sign * plain - 1e-3  # stronger push: more negative loss for A > 0
    assert sign * dominate > sign * plain + 1e-3
    assert abs(direction) <= 1 + C and abs(dominate) >= 1 - C


def test_uses_old_logps_when_given(trainers):
    """With π_old supplied (several iterations per batch), the weights come from it, not from the current policy."""
    batch = _batch(ADVANTAGES)
    batch["old_per_token_logps"] = torch.full(batch["completion_ids"].shape, math.log(0.5))
    scaled = {**batch, "advantages": batch["advantages"] * (1 + C - C * 0.5)}
    torch.testing.assert_close(_loss(trainers["direction"], batch), _loss(trainers["plain"], scaled))
    assert trainers["direction"]._metrics["eval"]["reweight/mean_weight"][-1] == pytest.approx(1 + C - C * 0.5)


def test_on_policy_weights_come_from_the_loss_forward(tokenizer, tmp_path):
    """On policy, π_old is the loss's own forward detached: one forward per loss (as plain GRPO), and under dropout
    the weights see the same dropout mask as the loss (a second forward would draw another)."""
    model = tiny_model()
    model.config.attention_dropout = 0.5
    plain = _trainer(GRPOTrainer, tokenizer, tmp_path, model=model)
    direction = _trainer(DirectionalGRPOTrainer, tokenizer, tmp_path, model=model, reweight="direction", reweight_c=C)
    model.train()
    plain.current_gradient_accumulation_steps = direction.current_gradient_accumulation_steps = 1  # as train() sets
    batch = _batch(ADVANTAGES)
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    with torch.no_grad():
        torch.manual_seed(1)
        got = direction._compute_loss(model, dict(batch))
        assert len(forwards) == 1
        torch.manual_seed(1)  # the same dropout mask again, for the reference weights
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        logps = plain._get_per_token_logps_and_entropies(model, ids, mask, 6, compute_entropy=True)[0]
        torch.manual_seed(1)
        weighted = batch["advantages"][:, None] * (1 + C - C * logps.exp())
        want = plain._compute_loss(model, {**batch, "advantages": weighted})
    hook.remove()
    torch.testing.assert_close(got, want)


def test_rejects_bad_options(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="reweight must be"):
        _trainer(DirectionalGRPOTrainer, tokenizer, tmp_path, reweight="up")
    with pytest.raises(ValueError, match="reweight_c"):
        _trainer(DirectionalGRPOTrainer, tokenizer, tmp_path, reweight="direction", reweight_c=1.5)
