"""The demo's models side: one request's three outputs (base, RL, extrapolated) generated at once in threads and
streamed, scored teacher-forced when they end; every field of a request checked; cancelled work stopped.

Each output has its own random generator seeded by the same seed. A request holds one of the server's slots until
its generation threads have ended, so a cancelled request counts until it has really stopped.

One file for the demo's model side: request checks, the three generation threads and their scoring share the
`Column` state and the cancellation protocol; the page (`demo_page.py`) only renders.
"""

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import gradio as gr
import torch
from torch import Tensor
from transformers import LogitsProcessor, PreTrainedModel, StoppingCriteria
from transformers.generation import BaseStreamer

from hf_extrapolate import DeltaLogpExtrapolation, ExtrapolationConfig
from hf_extrapolate.analysis.token_stats import teacher_forced, token_log_probs
from hf_extrapolate.configuration import CRITERIA
from hf_extrapolate.evaluation.grading import build_prompt
from hf_extrapolate.extrapolation import (
    NEG_INF,
    combine,
    extrapolated_log_probs,
    log_probs,
    sampling_log_probs,
)
from hf_extrapolate.loading import model_device

COLUMNS = ("base", "rl", "extrapolated")
# "random" is left out: its greedy flags are fresh coin flips that teacher-forced scoring cannot recover
DEMO_CRITERIA = [c for c in CRITERIA if c != "random"]
SETTING_HELP = {f.name: f.metadata["help"] for f in fields(ExtrapolationConfig)}  # the controls' info lines
GAMMA_RANGE = (-1.0, 4.0)  # γ = −1 is the base model, 0 the RL model
TAU_RANGE = (-5.0, 5.0)
TEMPERATURE_RANGE = (0.05, 2.0)
TOP_P_RANGE = (0.05, 1.0)
BUSY_WAIT_S = 60.0  # how long a request waits for cancelled requests' generations to end before it gives up
JOIN_WAIT_S = 30.0  # how long a handler waits for its generations to stop (they stop at their next token)
TOP_K = 5  # alternatives shown per model in a token's tooltip
log = logging.getLogger("hf_extrapolate.demo")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; set at launch."""

    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 256


@dataclass
class Column:
    """One output as it streams: its token ids, then (once finished) its per-token statistics."""

    ids: list[int] = field(default_factory=list)
    done: bool = False
    tokens: list[dict] | None = None
    resample_rate: float | None = None
    changed_rate: float | None = None


class _Feed(BaseStreamer):
    """Posts ``("ids", column, new token ids)`` as tokens arrive, and ``("done", column, None)`` at the end."""

    def __init__(self, column: str, post: Callable[[tuple], None]):
        self.column, self.post, self.prompt_seen = column, post, False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        self.post(("ids", self.column, value.flatten().tolist()))

    def end(self) -> None:
        self.post(("done", self.column, None))


class SeededSampling(LogitsProcessor):
    """Draw the next token with temperature and top-p from a private seeded generator and return it one-hot.

    `generate` (run greedily) then emits it. Each output gets its own generator, so outputs generated at
    the same time on shared models stay reproducible; temperature 0 is greedy decoding.
    """

    def __init__(self, temperature: float, top_p: float, seed: int):
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.generator is None:  # on the device of the scores (the last shard of a split model)
            self.generator = torch.Generator(scores.device).manual_seed(self.seed)
        probs = sampling_log_probs(log_probs(scores), self.temperature, self.top_p).exp()
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return torch.full_like(scores, NEG_INF).scatter_(-1, choice, 0.0)


class _StopOn(StoppingCriteria):
    """Stops generation once the event is set (the request was cancelled or failed)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def token_stats(
    rl: PreTrainedModel, base: PreTrainedModel, tokenizer: Any, ids: Tensor, start: int,
    config: ExtrapolationConfig, resampled: bool,
) -> list[dict]:  # fmt: skip
    """Teacher-forced statistics of the tokens ``ids[start:]`` (1-D ``ids``), by the analysis scorer
    (`teacher_forced`): Δlog p, log-probs, the top alternatives under π_B, π_R and π_X, and, if ``resampled``,
    the chance the selective sampler drew the token from π_X (``m · π_X'(y) / P(y)``, exact given the context;
    0/1 when greedy)."""

    def at_position(rl_scores: Tensor, base_scores: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        logp_rl, logp_base = log_probs(rl_scores), log_probs(base_scores)
        logp_x = extrapolated_log_probs(logp_rl, logp_base, config.model_weights)
        out = {"logp_base": token_log_probs(logp_base, tokens), "logp_rl": token_log_probs(logp_rl, tokens)}
        for name, logp in (("base", logp_base), ("rl", logp_rl), ("extrapolated", logp_x)):
            out[f"{name}_p"], out[f"{name}_id"] = logp.topk(min(TOP_K, logp.shape[-1]), dim=-1)
            out[f"{name}_p"] = out[f"{name}_p"].exp()
        if resampled and config.select is not None:
            mixture, (m, _) = combine(logp_rl, logp_base, config)
            sampled = token_log_probs(sampling_log_probs(logp_x, config.temperature, config.top_p), tokens)
            chance = (m.log() + sampled - token_log_probs(mixture, tokens)).exp()  # NaN (then 0) beyond the vocabulary
            out["chance"] = chance.nan_to_num(0.0).clamp(0.0, 1.0)
        return out

    row = ids[None]
    score = torch.arange(len(ids))[None] >= start
    stats = {k: v[0, start:] for k, v in teacher_forced(
        rl, base, row, torch.ones_like(row), score, at_position, vocab_size=len(tokenizer)
    ).items()}  # fmt: skip
    new_ids = ids[start:].tolist()
    out = []
    for t, (token_id, text) in enumerate(zip(new_ids, tokenizer.batch_decode([[i] for i in new_ids]), strict=True)):
        lp_b, lp_r = stats["logp_base"][t].item(), stats["logp_rl"][t].item()
        out.append({
            "token": text, "id": token_id, "logp_base": lp_b, "logp_rl": lp_r, "delta_logp": lp_r - lp_b,
            "top": {
                name: [[tokenizer.decode([int(i)]), round(p, 4)]
                       for p, i in zip(stats[f"{name}_p"][t].tolist(), stats[f"{name}_id"][t].tolist())]
                for name in COLUMNS
            },
            "resampled": stats["chance"][t].item() if "chance" in stats else None,
        })  # fmt: skip
    return out


def refuse(message: str) -> gr.Error:
    """An expected refusal: its one line goes to the user and to the server log, without a traceback."""
    log.warning("refused: %s", message)
    return gr.Error(message, print_exception=False)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _is_number(value: Any) -> bool:
    """An int or a finite float, not a bool (JSON's true/false) and not text."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _real(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high]``; anything else (text, a bool, NaN, a list) is refused."""
    if not (_is_number(value) and low <= value <= high):  # compared before float(): a huge int would overflow
        raise refuse(f"{name} must be a number within [{low:g}, {high:g}], got {_brief(value)}.")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (integral floats, as number boxes send, are accepted)."""
    if not (_is_number(value) and low <= value <= high and float(value).is_integer()):
        raise refuse(f"{name} must be a whole number between {low} and {high}, got {_brief(value)}.")
    return int(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not (isinstance(value, str) and value in choices):
        raise refuse(f"{name} must be one of {', '.join(choices)}; got {_brief(value)}.")
    return value


async def _ended(thread: threading.Thread, timeout: float) -> bool:
    """Wait (without blocking the event loop) until ``thread`` has ended, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not thread.is_alive()


class DemoModels:
    """The RL/base pair and tokenizer fixed at launch, the request limits, and the slots for running work.

    At most ``concurrency`` requests generate at once. A slot is held until the request's generation threads
    have ended, not until its handler returns: a cancelled request counts until its threads have stopped.
    """

    def __init__(
        self, rl: PreTrainedModel, base: PreTrainedModel, tokenizer: Any, limits: Limits, concurrency: int = 1
    ):
        self.rl, self.base, self.tokenizer, self.limits = rl, base, tokenizer, limits
        self.slots = threading.BoundedSemaphore(concurrency)
        stop = {tokenizer.eos_token_id, *_as_list(rl.generation_config.eos_token_id)}
        stop |= {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",) if t in tokenizer.all_special_tokens}
        self.stop_ids = sorted(i for i in stop if i is not None)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, *self.stop_ids) if i is not None), None)
        positions = [getattr(m.config, "max_position_embeddings", None) for m in (rl, base)]
        self.context = min((p for p in positions if p), default=2**31)

    def encode(self, prompt: Any) -> Tensor:
        """The prompt as model input (inside the chat template when the tokenizer has one), within the limits."""
        if not isinstance(prompt, str):
            raise refuse(f"The prompt must be text, got {type(prompt).__name__}.")
        if not prompt.strip():
            raise refuse("Type a prompt first.")
        if len(prompt) > self.limits.max_prompt_chars:
            raise refuse(f"The prompt has {len(prompt)} characters; this demo takes at most "
                         f"{self.limits.max_prompt_chars}.")  # fmt: skip
        text = build_prompt(self.tokenizer, prompt)
        ids = self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template, return_tensors="pt").input_ids
        if ids.shape[1] > self.limits.max_prompt_tokens:
            raise refuse(f"The prompt is {ids.shape[1]} tokens long; this demo takes at most "
                         f"{self.limits.max_prompt_tokens}.")  # fmt: skip
        return ids

    def config(
        self, gamma: Any, mode: Any, criterion: Any, tau: Any, decoding: Any, temperature: Any, top_p: Any
    ) -> ExtrapolationConfig:
        """Validate the request's extrapolation and sampling settings (one clear `gr.Error` for a bad field)."""
        gamma = _real("γ", gamma, *GAMMA_RANGE)
        mode = _choice("mode", mode, ("full", "selective"))
        criterion = _choice("criterion", criterion, DEMO_CRITERIA)
        tau = _real("τ", tau, *TAU_RANGE)
        decoding = _choice("decoding", decoding, ("greedy", "sample"))
        temperature = _real("temperature", temperature, *TEMPERATURE_RANGE)
        top_p = _real("top-p", top_p, *TOP_P_RANGE)
        selective = mode == "selective"
        try:
            return ExtrapolationConfig(
                gamma=gamma, select=criterion if selective else None, threshold=tau if selective else None,
                temperature=0.0 if decoding == "greedy" else temperature, top_p=top_p,
            )  # fmt: skip
        except ValueError as err:
            raise refuse(str(err)) from err

    async def stream(
        self, prompt: Any, config: ExtrapolationConfig, max_new_tokens: Any, seed: Any
    ) -> AsyncIterator[dict[str, Column]]:
        """Generate the three outputs at once, each in a thread; yield their state whenever new tokens arrive,
        and again as each output is scored. Closing or cancelling the iteration stops the threads (at their next
        token) and waits for them to end."""
        max_new_tokens = _integer("max new tokens", max_new_tokens, 1, self.limits.max_new_tokens)
        seed = _integer("seed", seed, 0, 2**63 - 1)
        prompt_ids = self.encode(prompt)
        if prompt_ids.shape[1] + max_new_tokens > self.context:
            raise refuse(f"The prompt ({prompt_ids.shape[1]} tokens) and {max_new_tokens} new tokens exceed the "
                         f"models' context of {self.context} tokens; ask for fewer new tokens.")  # fmt: skip
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def post(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (the server is shutting down)
                loop.call_soon_threadsafe(events.put_nowait, event)

        stop, errors = threading.Event(), []
        models = {"base": self.base, "rl": self.rl, "extrapolated": self.rl}
        # applies temperature and top-p to π_X itself
        extrapolation = DeltaLogpExtrapolation(self.base, config, tokenizer=self.tokenizer)
        processors = {
            name: [
                *([extrapolation] if name == "extrapolated" else []),
                SeededSampling(*((1.0, 1.0) if name == "extrapolated" else (config.temperature, config.top_p)), seed),
            ]
            for name in COLUMNS
        }

        def run(name: str) -> None:
            model = models[name]
            ids = prompt_ids.to(model_device(model))
            try:
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids),
                    do_sample=False, max_new_tokens=max_new_tokens, logits_processor=processors[name],
                    stopping_criteria=[_StopOn(stop)], streamer=_Feed(name, post), eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id, repetition_penalty=1.0,
                )  # fmt: skip
                if stop.is_set():
                    return
                new = out[0, ids.shape[1] :].cpu()
                selective = name == "extrapolated"
                tokens = token_stats(
                    self.rl, self.base, self.tokenizer, torch.cat([prompt_ids[0], new]), prompt_ids.shape[1],
                    config, selective,
                ) if len(new) else []  # fmt: skip
                rates = (extrapolation.resample_rate, extrapolation.changed_rate) if selective else (None, None)
                post(("scored", name, (tokens, *rates)))
            except Exception as err:  # reported to the user once every thread has ended
                errors.append(err)
                stop.set()

        def supervise() -> None:  # holds the request's slot until its three generations have ended
            try:
                workers = [threading.Thread(target=run, args=(name,), daemon=True) for name in COLUMNS]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            finally:
                self.slots.release()
                post(("ended", None, None))

        deadline = time.monotonic() + BUSY_WAIT_S
        while not self.slots.acquire(blocking=False):  # a cancelled request's threads may still be stopping
            if time.monotonic() > deadline:
                raise refuse("The server is busy; try again in a minute.")
            await asyncio.sleep(0.05)
        supervisor = threading.Thread(target=supervise, daemon=True)
        try:
            supervisor.start()
        except BaseException:
            self.slots.release()
            raise
        columns = {name: Column() for name in COLUMNS}
        try:
            ended = False
            while not ended:
                batch = [await events.get()]
                while not events.empty():  # one update for everything that has arrived
                    batch.append(events.get_nowait())
                for kind, name, payload in batch:
                    if kind == "ids":
                        columns[name].ids.extend(payload)
                    elif kind == "done":
                        columns[name].done = True
                    elif kind == "scored":
                        columns[name].tokens, columns[name].resample_rate, columns[name].changed_rate = payload
                    ended |= kind == "ended"
                if not errors:
                    yield columns
            if errors:
                raise gr.Error(f"generation failed: {errors[0]}")
        finally:  # also runs when the request is cancelled or closed: stop the threads, wait for them
            stop.set()
            if not await _ended(supervisor, JOIN_WAIT_S):
                log.warning("a request's generations did not stop within %gs", JOIN_WAIT_S)


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def summary(columns: dict[str, Column], config: ExtrapolationConfig, tokenizer: Any) -> dict:
    """The JSON result: settings, then per output its text and per-token statistics."""
    return {
        "settings": config.to_dict(),
        "outputs": {
            name: {
                "text": tokenizer.decode(col.ids, skip_special_tokens=True),
                "tokens": col.tokens,
                "expected_resampled_share": col.resample_rate,
                "expected_changed_share": col.changed_rate,
            }
            for name, col in columns.items()
        },
    }
