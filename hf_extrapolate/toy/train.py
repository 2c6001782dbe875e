"""Train the toy pair: a small Llama base model by SFT on imperfect demonstrations, then GRPO from it.

Both models are cached as ordinary `save_pretrained` folders under `cache_dir()`, keyed by a hash of every
setting that shapes them; the base model is shared by all RL runs with the same base settings. A folder is built
in a temporary sibling under a file lock (a second process training the same model waits, then reuses it), and
the sha256 of each of its files, recorded in its `toy_settings.json`, is checked whenever it is reused.
The whole toy pipeline (settings, data, SFT, GRPO, cache) is one file so that its cache key sits beside every
setting it covers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from hf_extrapolate.evaluation.grading import INSTRUCTION
from hf_extrapolate.extras import require_extra
from hf_extrapolate.toy.task import format_prompt, make_problems, noisy_solution
from hf_extrapolate.toy.tokenizer import EOS, IM_END, build_tokenizer

TOY_TOKENS = ("user", "assistant", "Compute ", INSTRUCTION, "\\boxed{")  # whole strings matched as one token
PIPELINE_VERSION = 1  # part of every cache key: bump it when a change to this file changes the models
SETTINGS_FILE = "toy_settings.json"
POSITIVE_FIELDS = (
    "hidden_size", "num_layers", "num_heads", "sft_problems", "sft_lr", "sft_batch_size", "grpo_steps",
    "grpo_prompts", "num_generations", "grpo_lr",
)  # fmt: skip
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
    sft_problems: int = 60000
    slip_rate: float = 0.1
    nine_rate: float = 0.6
    sft_lr: float = 2e-3
    sft_batch_size: int = 64
    # GRPO (the DAPO recipe: no KL, clip 0.2/0.28, token-level normalisation)
    grpo_steps: int = 100
    grpo_prompts: int = 8
    num_generations: int = 8
    grpo_lr: float = 1e-4
    reweight: str | None = None
    reweight_c: float = 0.2

    def __post_init__(self) -> None:
        for name in POSITIVE_FIELDS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("slip_rate", "nine_rate", "reweight_c"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.reweight is not None:  # (training imports TRL, which reusing a cached plain pair does not need)
            from hf_extrapolate.training import REWEIGHTS

            if self.reweight not in REWEIGHTS:
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


# TRL's configs turn gradient checkpointing on; transformers 5.24 renamed the option (the old name warns)
CHECKPOINTING = next(n for n in ("activation_checkpointing", "gradient_checkpointing")
                     if n in TrainingArguments.__dataclass_fields__)  # fmt: skip


class _StageProgress(ProgressCallback):
    """transformers' training bar, named after the stage it counts (its total and ETA as usual)."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.stage)


def _train(trainer, stage: str) -> None:
    """Train with a bar named after ``stage``. TRL 1.x still calls transformers' `gradient_checkpointing_*`
    methods, which transformers 5.24 deprecated: those FutureWarnings are TRL's, not the user's, so hidden here."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_StageProgress(stage))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`(is_)?gradient_checkpointing", FutureWarning)
        trainer.train()


@contextlib.contextmanager
def _bars_off(library_logging):
    """Hide a library's progress bars for the block (transformers' and datasets' `utils.logging` share the API)."""
    shown = library_logging.is_progress_bar_enabled()
    library_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            library_logging.enable_progress_bar()


def no_transformers_bars() -> contextlib.AbstractContextManager:
    """Hide transformers' own progress bars (writing and loading shards) for the toy's tiny models."""
    from transformers.utils import logging as transformers_logging

    return _bars_off(transformers_logging)


@contextlib.contextmanager
def _quiet_setup():
    """While the trainers import and preprocess: no `datasets` bar per map step (the stage bar follows), no
    bitsandbytes CPU-kernel warning (TRL imports bitsandbytes where it is installed; the toy never quantizes), and
    no TRL warning about the installed vLLM's version (TRL checks it on import; the toy never generates with vLLM)."""
    from datasets.utils import logging as datasets_logging

    bnb = logging.getLogger("bitsandbytes")
    level = bnb.level
    bnb.setLevel(logging.ERROR)
    try:
        with _bars_off(datasets_logging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"TRL currently supports vLLM", UserWarning)
            yield
    finally:
        bnb.setLevel(level)


def _common_args(settings: ToySettings, out: Path) -> dict:
    return {
        CHECKPOINTING: True,
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


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of a saved model folder but `toy_settings.json`, which records them."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != SETTINGS_FILE)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _save(trainer, tokenizer: PreTrainedTokenizerFast, out: Path, settings: ToySettings, start: tuple) -> None:
    """Save model and tokenizer, with the settings, the wall-clock and CPU seconds since `start`, and the files'
    sha256 (checked on reuse)."""
    with no_transformers_bars():  # a 0.6M-parameter model: a bar per file is noise
        trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    info = {
        "settings": dataclasses.asdict(settings),
        "pipeline_version": PIPELINE_VERSION,
        "train_seconds": round(time.perf_counter() - start[0], 1),
        "cpu_seconds": round(_cpu_seconds() - start[1], 1),
        "sha256": _digests(out),
    }
    (out / SETTINGS_FILE).write_text(json.dumps(info, indent=2))


def train_base(settings: ToySettings, out: Path) -> None:
    """SFT a fresh model on noisy worked solutions of `settings.sft_problems` train problems (+ `<|im_end|>`)."""
    from datasets import Dataset

    with _quiet_setup():
        from trl import SFTConfig, SFTTrainer
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
    with _quiet_setup():
        trainer = SFTTrainer(
            model=_build_model(settings, tokenizer),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    _train(trainer, "toy base model: SFT")
    _save(trainer, tokenizer, out, settings, start)


def exact_match_reward(completion: str, answer: str) -> bool:
    """The toy pair's GRPO reward rule: the text between the last `\\boxed{` and its balanced `}` equals `answer`
    (integers compared as numbers).

    Not the paper's grader (`grading.is_correct`, math-verify, which also reads `\\fbox` and skips escaped braces):
    every cached toy pair and published toy number was trained with this rule, so it stays frozen here, under
    `PIPELINE_VERSION`. Evaluation never uses it.
    """
    start = completion.rfind("\\boxed{")
    if start < 0:
        return False
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[j], 0)
        if depth == 0:
            got, want = completion[i + 1 : j].strip(), answer.strip()
            if re.fullmatch(r"[+-]?\d+", got) and re.fullmatch(r"[+-]?\d+", want):
                return int(got) == int(want)
            return got == want
    return False


def _correctness(completions: list[str], answer: list[str], **_) -> list[float]:
    """GRPO reward: `exact_match_reward` of each completion, as 1.0 or 0.0."""
    return [float(exact_match_reward(c, a)) for c, a in zip(completions, answer, strict=True)]


def train_rl(settings: ToySettings, base: Path, out: Path) -> None:
    """GRPO (optionally reweighted along the RLVR direction) from the base model in `base`."""
    from datasets import Dataset

    with _quiet_setup():
        from hf_extrapolate.training import DirectionalGRPOConfig, DirectionalGRPOTrainer
    start = time.perf_counter(), _cpu_seconds()
    tokenizer = toy_tokenizer()
    batch = settings.grpo_prompts * settings.num_generations
    problems = make_problems("train", settings.grpo_steps * settings.grpo_prompts, seed=settings.seed + 1000)
    rows = [{"prompt": format_prompt(p["problem"], tokenizer), "answer": p["answer"]} for p in problems]
    args = DirectionalGRPOConfig(
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
        reweight=settings.reweight,
        reweight_c=settings.reweight_c,
    )
    with _quiet_setup():
        trainer = DirectionalGRPOTrainer(
            model=_load(base),
            reward_funcs=_correctness,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    _train(trainer, "toy RL model: GRPO")
    _save(trainer, tokenizer, out, settings, start)


def _load(folder: Path) -> torch.nn.Module:
    with no_transformers_bars():
        return AutoModelForCausalLM.from_pretrained(folder)


def check_cached(folder: Path) -> str | None:
    """Why the cached model `folder` cannot be reused (missing, or a file that does not match its recorded
    sha256), or None when it can. A folder from before sha256 was recorded passes if its weights load."""
    if not folder.is_dir():
        return "not cached"
    try:
        info = json.loads((folder / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return f"{SETTINGS_FILE} is missing or unreadable"
    recorded = info.get("sha256")
    if recorded is None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            load_file(folder / "model.safetensors")
        except (OSError, SafetensorError) as err:
            return f"model.safetensors cannot be read ({err})"
        return None
    found = _digests(folder)
    bad = [name for name, digest in recorded.items() if found.get(name) != digest]
    return f"{', '.join(bad)} {'do' if len(bad) > 1 else 'does'} not match the recorded sha256" if bad else None


def _build_once(target: Path, build: Callable[[Path], None], announce: Callable[[], None] = lambda: None) -> Path:
    """Reuse `target` if `check_cached` passes; else `announce()`, run `build(tmp_dir)` and rename it into place.

    Building runs under a file lock beside `target`: a second process asking for the same folder waits for the
    first, then reuses its result; temporaries left by killed runs (which no longer hold the lock) are removed; a
    damaged folder is trained again, with a one-line notice. Reusing a sound folder waits for no lock.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.parent / f".{target.name}.lock")

    def remove_temporaries() -> None:  # only while holding the lock: then no live process writes them
        for stale in target.parent.glob(f"{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    if check_cached(target) is None:
        with contextlib.suppress(Timeout, OSError), lock.acquire(timeout=0):  # (OSError: a read-only cache)
            remove_temporaries()
        return target
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"hf-extrapolate: another process is training {target}; waiting for it", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        remove_temporaries()
        problem = check_cached(target)
        if problem is None:
            return target
        if target.exists():
            print(f"hf-extrapolate: the cached {target} is damaged ({problem}); training it again", file=sys.stderr)
            shutil.rmtree(target)
        announce()
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return target


# Seconds per unit of `_work` on a quiet 2-core machine, from the default seed-0 pair's `toy_settings.json` when
# `hf-extrapolate quickstart` trained it from nothing (2026-12-01): SFT of 60000 problems 448 s, and GRPO of 100
# steps × 8 × 8 rollouts 100 s (docs/RESULTS.md)
QUIET_RATE = {"base": 448 / 60000, "rl": 100 / (100 * 8 * 8)}


def _work(settings: ToySettings, stage: str) -> float:
    """SFT problems or GRPO rollouts, scaled by the model's size (hidden² × layers) relative to the default."""
    default = ToySettings()
    size = settings.hidden_size**2 * settings.num_layers / (default.hidden_size**2 * default.num_layers)
    if stage == "base":
        return settings.sft_problems * size
    return settings.grpo_steps * settings.grpo_prompts * settings.num_generations * size


def _past_seconds_per_work(root: Path, stage: str) -> float | None:
    """Median seconds per unit of `_work` of the runs cached in `root` (what this machine took), if any."""
    rates = []
    for path in root.glob(f"toy-{stage}-*/{SETTINGS_FILE}"):
        try:
            info = json.loads(path.read_text())
            rates.append(info["train_seconds"] / _work(ToySettings(**info["settings"]), stage))
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
    return statistics.median(rates) if rates else None


def _minutes(seconds: float) -> str:
    return "under a minute" if seconds < 60 else f"~{seconds / 60:.0f} min"


def training_notice(settings: ToySettings, stages: list[str], root: Path) -> str:
    """One line: what will be trained, why, for how long, and where it is cached."""
    what = {("base", "rl"): "SFT of the base model, then GRPO", ("base",): "SFT of the base model",
            ("rl",): "GRPO from the cached base model"}[tuple(stages)]  # fmt: skip
    quiet = sum(QUIET_RATE[stage] * _work(settings, stage) for stage in stages)
    past = [_past_seconds_per_work(root, stage) for stage in stages]
    here = ""
    if all(rate is not None for rate in past):
        seconds = sum(rate * _work(settings, stage) for rate, stage in zip(past, stages))
        here = f"; {_minutes(seconds)} judging by the runs cached here"
    return (f"hf-extrapolate: no cached toy pair for these settings (seed {settings.seed}): training it ({what}), "
            f"{_minutes(quiet)} on a quiet 2-core machine{here}; cached in {root}")  # fmt: skip


def pair_paths(seed: int = 0, *, root: Path | None = None, **overrides) -> tuple[Path, Path]:
    """(rl_dir, base_dir) of the toy pair for these settings, training whichever is not cached yet.

    `overrides` are `ToySettings` fields, e.g. `reweight="direction", reweight_c=0.2`. Before any training, one
    line on stderr says what is trained, about how long it takes, and where it is cached.
    """
    settings = ToySettings(seed=seed, **overrides)
    root = cache_dir() if root is None else Path(root)
    base, rl = root / f"toy-base-{settings.key(BASE_FIELDS)}", root / f"toy-rl-{settings.key()}"

    def stages() -> list[str]:
        return [stage for stage, folder in (("base", base), ("rl", rl)) if check_cached(folder) is not None]

    if stages():
        require_extra("train", "trl", "datasets", feature="training the toy pair")
    # printed once, by whichever build actually starts (none, if another process trained the pair meanwhile)
    announce = functools.cache(lambda: print(training_notice(settings, stages(), root), file=sys.stderr, flush=True))
    _build_once(base, lambda d: train_base(settings, d), announce)
    _build_once(rl, lambda d: train_rl(settings, base, d), announce)
    return rl, base
