"""What the pair needs in vLLM, from its configs alone (no vLLM, no weights): for ``--dry-run --backend vllm``."""

from __future__ import annotations

from typing import Any

from ..loading import estimate_memory

TP_SIZES = (1, 2, 4, 8, 16)


def vllm_memory(
    rl: str,
    base: str,
    dtype: str = "bfloat16",
    tokens: int = 4096,
    gpu_gib: float = 80.0,
    gpu_memory_utilization: float = 0.9,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """`estimate_memory` of the pair plus vLLM's view of it: both halves' weights, the KV cache per token of the pair
    (both halves' layers: twice one model's for a pair of one shape), and the smallest tensor-parallel size whose
    share of the weights leaves room for one ``tokens``-long sequence in ``gpu_memory_utilization`` of a
    ``gpu_gib`` card. A lower bound: activations, CUDA graphs and vLLM's own buffers come on top."""
    from transformers import AutoConfig

    report = estimate_memory(rl, base, dtype, tokens=tokens, trust_remote_code=trust_remote_code)
    text = AutoConfig.from_pretrained(rl, trust_remote_code=trust_remote_code).get_text_config()
    heads, kv_heads = text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    weights = report["rl"]["weights_gib"] + report["base"]["weights_gib"]
    kv_per_token = (report["rl"]["kv_cache_gib"] + report["base"]["kv_cache_gib"]) / tokens
    budget = gpu_gib * gpu_memory_utilization
    plans = []
    for tp in TP_SIZES:
        if heads % tp or (kv_heads % tp and tp % kv_heads):  # vLLM's rule: split or replicate the KV heads evenly
            continue
        kv_per_token_per_gpu = kv_per_token * max(1, kv_heads // tp) / kv_heads  # replicated past kv_heads
        free = budget - weights / tp
        plans.append({"tensor_parallel_size": tp, "weights_gib_per_gpu": weights / tp,
                      "kv_tokens": max(0, int(free / kv_per_token_per_gpu))})  # fmt: skip
    fits = [plan for plan in plans if plan["kv_tokens"] >= tokens]
    report["vllm"] = {
        "weights_gib": weights,
        "kv_cache_kib_per_token": kv_per_token * 2**20,
        "gpu_gib": gpu_gib,
        "gpu_memory_utilization": gpu_memory_utilization,
        "plans": plans,
        "suggested_tensor_parallel_size": fits[0]["tensor_parallel_size"] if fits else None,
    }
    return report
