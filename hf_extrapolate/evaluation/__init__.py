"""Evaluation: math grading (math-verify on the last ``\\boxed{}``) and the lm-evaluation-harness integration."""
