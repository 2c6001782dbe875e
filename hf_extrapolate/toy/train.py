"""Train the toy pair: a small Llama base model by SFT on imperfect demonstrations, then GRPO from it.

Both models are cached as ordinary `save_pretrained` folders under `cache_dir()`, keyed by a hash of every
setting that shapes them; the base model is shared by all RL runs with the same base settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
from trl import GRPOConfig, SFTConfig, SFTTrainer

from hf_extrapolate.toy.task import PROMPT_SUFFIX, format_prompt, is_correct, make_problems, noisy_solution
from hf_extrapolate.toy.tokenizer import EOS, IM_END, build_tokenizer
from hf_extrapolate.training import REWEIGHTS, DirectionalGRPOTrainer

TOY_TOKENS = ("user", "assistant", "Compute ", PROMPT_SUFFIX, "\\boxed{")  # whole strings matched as one token
PIPELINE_VERSION = 1  # part of every cache key: bump it when a change to this file changes the models
BASE_FIELDS = (
    "seed", "hidden_size", "num_layers", "num_heads", "sft_problems", "slip_rate", "nine_rate", "sft_lr",
    "sft_batch_size",
)  # fmt: skip


@dataclass(frozen=True)
class ToySettings:
    """Everything that shapes the toy pair; a different value gives a different cached pair."""

    seed: int = 0
    # base model: a Llama (RoPE) of about 0.6M parameters
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    # SFT on imperfect demonstrations (see `noisy_solution`)
    sft_problems: int = 40000
    slip_rate: float = 0.1
    nine_rate: float = 0.6
    sft_lr: float = 2e-3
    sft_batch_size: int = 64
    # GRPO (the DAPO recipe: no KL, clip 0.2/0.28, token-level normalisation)
    grpo_steps: int = 150
    grpo_prompts: int = 8
    num_generations: int = 8
    grpo_lr: float = 2e-4
    reweight: str | None = None
    reweight_c: float = 0.2

    def __post_init__(self) -> None:
        if self.reweight is not None and self.reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {REWEIGHTS} or None, got {self.reweight!r}")

    def key(self, fields: tuple[str, ...] | None = None) -> str:
        """A short hash of the chosen fields (all fields by default)."""
        values = dataclasses.asdict(self)
        if fields is not None:
            values = {f: values[f] for f in fields}
        values["pipeline_version"] = PIPELINE_VERSION
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """`$HF_EXTRAPOLATE_HOME`, else `$XDG_CACHE_HOME/hf_extrapolate`, else `~/.cache/hf_extrapolate`."""
    if home := os.environ.get("HF_EXTRAPOLATE_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "hf_extrapolate"


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """The char-level tokenizer plus `TOY_TOKENS` (a prompt is about 20 tokens instead of 110).

    As in Qwen's chat models, a turn ends with `<|im_end|>`, which is the end-of-sequence token.
    """
    tokenizer = build_tokenizer(TOY_TOKENS)
    tokenizer.eos_token = IM_END
    tokenizer.model_max_length = 256
    return tokenizer


def _build_model(settings: ToySettings, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    torch.manual_seed(settings.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids([IM_END, EOS]),
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _common_args(settings: ToySettings, out: Path) -> dict:
    return {
        "output_dir": str(out / "trainer"),
        "seed": settings.seed,
        "data_seed": settings.seed,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 25,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "dataloader_num_workers": 0,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _save(trainer, tokenizer: PreTrainedTokenizerFast, out: Path, settings: ToySettings, start: tuple) -> None:
    """Save model and tokenizer, with the settings and the wall-clock and CPU seconds since `start`."""
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    info = {
        "settings": dataclasses.asdict(settings),
        "pipeline_version": PIPELINE_VERSION,
        "train_seconds": round(time.perf_counter() - start[0], 1),
        "cpu_seconds": round(_cpu_seconds() - start[1], 1),
    }
    (out / "toy_settings.json").write_text(json.dumps(info, indent=2))


def train_base(settings: ToySettings, out: Path) -> None:
    """SFT a fresh model on noisy worked solutions of `settings.sft_problems` train problems (+ `<|im_end|>`)."""
    start = time.perf_counter(), _cpu_seconds()
    tokenizer = toy_tokenizer()
    rng = random.Random(f"slips/{settings.seed}")
    problems = make_problems("train", settings.sft_problems, seed=settings.seed)
    rows = [
        {
            "prompt": format_prompt(p["problem"], tokenizer),
            "completion": noisy_solution(p["terms"], settings.slip_rate, settings.nine_rate, rng)[0],
        }
        for p in problems
    ]
    args = SFTConfig(
        **_common_args(settings, out),
        per_device_train_batch_size=settings.sft_batch_size,
        num_train_epochs=1,
        learning_rate=settings.sft_lr,
        weight_decay=0.01,
        max_length=tokenizer.model_max_length,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=_build_model(settings, tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    _save(trainer, tokenizer, out, settings, start)


def _correctness(completions: list[str], answer: list[str], **_) -> list[float]:
    """GRPO reward: 1 if the last `\\boxed{}` is the answer, else 0."""
    return [float(is_correct(c, a)) for c, a in zip(completions, answer, strict=True)]


def train_rl(settings: ToySettings, base: Path, out: Path) -> None:
    """GRPO (optionally reweighted along the RLVR direction) from the base model in `base`."""
    start = time.perf_counter(), _cpu_seconds()
    tokenizer = toy_tokenizer()
    batch = settings.grpo_prompts * settings.num_generations
    problems = make_problems("train", settings.grpo_steps * settings.grpo_prompts, seed=settings.seed + 1000)
    rows = [{"prompt": format_prompt(p["problem"], tokenizer), "answer": p["answer"]} for p in problems]
    args = GRPOConfig(
        **_common_args(settings, out),
        per_device_train_batch_size=batch,
        num_generations=settings.num_generations,
        max_steps=settings.grpo_steps,
        learning_rate=settings.grpo_lr,
        max_completion_length=80,
        temperature=1.0,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",
    )
    trainer = DirectionalGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        reward_funcs=_correctness,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        reweight=settings.reweight,
        reweight_c=settings.reweight_c,
    )
    trainer.train()
    _save(trainer, tokenizer, out, settings, start)


def _build_once(target: Path, build) -> Path:
    """Run `build(tmp_dir)` unless `target` exists, then move the result into place atomically."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same pair first: keep theirs
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pair_paths(seed: int = 0, *, root: Path | None = None, **overrides) -> tuple[Path, Path]:
    """(rl_dir, base_dir) of the toy pair for these settings, training whichever is not cached yet.

    `overrides` are `ToySettings` fields, e.g. `reweight="direction", reweight_c=0.2`.
    """
    settings = ToySettings(seed=seed, **overrides)
    root = cache_dir() if root is None else Path(root)
    base = _build_once(root / f"toy-base-{settings.key(BASE_FIELDS)}", lambda d: train_base(settings, d))
    rl = _build_once(root / f"toy-rl-{settings.key()}", lambda d: train_rl(settings, base, d))
    return rl, base
