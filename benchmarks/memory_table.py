"""Print the README's memory table: what a base/RL pair needs, from parameter counts (no weights downloaded).

The architectures are the published configs of the Qwen models the paper uses, written out here because this
machine cannot reach the hub; with a network, `hf-extrapolate generate --rl ID --base ID --dry-run` reads the real
config of any pair. Run: python benchmarks/memory_table.py
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen3Config

from hf_extrapolate.loading import model_memory

PAIRS = {  # pair: (config class, config) — both models of a pair share one architecture
    "Qwen2.5-Math-7B + RL": (Qwen2Config, dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)),
    "Qwen3-8B-Base + RL": (Qwen3Config, dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                             num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                             vocab_size=151936)),
    "Qwen3-14B-Base + UniReason-14B-RL": (Qwen3Config, dict(hidden_size=5120, intermediate_size=17408,
                                                            num_hidden_layers=40, num_attention_heads=40,
                                                            num_key_value_heads=8, head_dim=128, vocab_size=151936)),
    "Qwen2.5-32B + DAPO-Qwen-32B": (Qwen2Config, dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                                                      num_attention_heads=40, num_key_value_heads=8,
                                                      vocab_size=152064)),
}  # fmt: skip
TOKENS = 20_000  # the paper's longest generations


def main() -> None:
    dtypes = ("bfloat16", "int8", "nf4")
    print(f"| pair | parameters (each) | KV cache, both models, 1 × {TOKENS // 1000}k tokens (bf16) | "
          + " | ".join(f"total, {d}" for d in dtypes) + " |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, (cls, kw) in PAIRS.items():
        config = cls(**kw, tie_word_embeddings=False)
        rows = [model_memory(config, d, tokens=TOKENS) for d in dtypes]
        kv = 2 * rows[0]["kv_cache_gib"]
        totals = " | ".join(f"{2 * r['weights_gib'] + kv:.0f} GiB" for r in rows)
        print(f"| {name} | {rows[0]['parameters'] / 1e9:.2f} B | {kv:.1f} GiB | {totals} |")


if __name__ == "__main__":
    main()
