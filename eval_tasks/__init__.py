"""The ``hfx_*`` lm-evaluation-harness tasks (YAML) and their offline data, installed as ``hf_extrapolate.eval_tasks``.

``hf-extrapolate tasks-path`` prints this folder; see README.md here.
"""
