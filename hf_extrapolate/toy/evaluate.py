"""Sample completions for toy problems in batches and grade them with the paper's grader (`grading.is_correct`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from hf_extrapolate.processor import generate_arguments
from hf_extrapolate.toy.task import format_prompt

MAX_NEW_TOKENS = 80  # the longest solution is about 60 characters


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[dict],
    *,
    k: int = 1,
    do_sample: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    top_p: float = 1.0,
    logits_processor: Sequence[LogitsProcessor] = (),
    desc: str = "generate",
) -> list[list[str]]:
    """`k` completions per problem (sampled at temperature 1 and ``top_p``, or greedy), in the paper's prompt
    format."""
    prompts = [format_prompt(p["problem"], tokenizer) for p in problems]
    torch.manual_seed(seed)
    out: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left").to(model.device)  # fmt: skip
        ids = model.generate(
            **generate_arguments(
                model,
                logits_processor,
                **batch,
                do_sample=do_sample,
                temperature=1.0 if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=0 if do_sample else None,
                num_return_sequences=k,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
        texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        out.extend(texts[i : i + k] for i in range(0, len(texts), k))
    return out

