"""The project's own toy base/RLVR pair: task, tokenizer and training pipeline."""
