"""Hooks that the lm-evaluation-harness task YAMLs in ``eval_tasks/`` reference with ``!function``.

Every data source is normalised to two fields, ``problem`` and ``answer`` (strings), so hub datasets and
local JSONL files go through the same prompt and grading.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_extrapolate.evaluation.grading import last_boxed, score_samples, user_message

if TYPE_CHECKING:  # `datasets` (the eval extra) is imported where used: `read_problems` works without it
    import datasets

_PROBLEM_KEYS = ("problem", "question")


def _field(doc: Mapping[str, Any], names: Iterable[str]) -> Any:
    lowered = {key.lower(): value for key, value in doc.items()}
    return next((lowered[name] for name in names if lowered.get(name) is not None), None)


def _answer_text(answer: Any) -> str:
    """A reference answer as a string: GSM8K's ``... #### 1,234`` gives ``1234``; ``27.0`` gives ``27``."""
    if isinstance(answer, float) and math.isfinite(answer) and answer.is_integer():
        return str(int(answer))
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1].replace(",", "")
    return text.strip()


def normalize_doc(doc: Mapping[str, Any]) -> dict[str, str]:
    """``{"problem", "answer"}`` from a record of any supported dataset.

    The problem is taken from ``problem`` or ``question``; the answer from ``answer`` or else from the last
    ``\\boxed{}`` of ``solution`` (the MATH dataset). Field names are matched case-insensitively.
    """
    problem = _field(doc, _PROBLEM_KEYS)
    answer = _field(doc, ("answer",))
    if answer is None and (solution := _field(doc, ("solution",))) is not None:
        answer = last_boxed(str(solution))
    if problem is None or answer is None:
        raise ValueError(f"a record needs a 'problem' (or 'question') and an 'answer' field; got {sorted(doc)}")
    return {"problem": str(problem).strip(), "answer": _answer_text(answer)}


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval ``process_docs``: keep only the normalised ``problem`` and ``answer`` columns."""
    import datasets

    # explicit features: without them a numeric `answer` column keeps its type (27.0 instead of "27")
    features = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string")})
    return dataset.map(normalize_doc, remove_columns=dataset.column_names, features=features)


def doc_to_text(doc: Mapping[str, str]) -> str:
    """The user message of the paper's protocol: the problem, then the step-by-step / ``\\boxed{}`` instruction."""
    return user_message(doc["problem"])


def process_results(doc: Mapping[str, str], results: list[Any]) -> dict[str, float]:
    """lm-eval ``process_results``: `results` holds one entry, the list of samples kept by ``take_first_k``."""
    samples = results[0]
    return score_samples([samples] if isinstance(samples, str) else list(samples), doc["answer"])


def jsonl_dataset(data_files: str, config_source: str | None = None, **_: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: a JSONL file as the ``test`` split.

    A relative `data_files` is resolved against the directory of the task YAML (lm-eval passes its path as
    ``config_source`` in the task metadata), not the working directory. Other metadata is ignored.
    """
    path = Path(data_files).expanduser()
    if not path.is_absolute() and config_source:
        path = Path(config_source).parent / path
    if not path.is_file():
        raise FileNotFoundError(f"JSONL data file not found: {path}")
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(path)})


def read_problems(path: str | Path, n: int | None = None) -> list[dict[str, str]]:
    """The first `n` (all when None) records of a JSONL file, normalised by `normalize_doc` as `eval` reads them.

    Blank lines are skipped; a line that is not a JSON object with a problem and an answer is a ValueError
    naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no JSONL file at {str(path)!r}")
    rows: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if n is not None and len(rows) == n:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}")
            try:
                rows.append(normalize_doc(record))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    if not rows:
        raise ValueError(f"{path} holds no problems")
    return rows


def write_jsonl(problems: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``{"problem", "answer"}`` records (extra keys such as ``solution`` are dropped); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for record in problems:
            out.write(json.dumps(normalize_doc(record), ensure_ascii=False) + "\n")
            count += 1
    return count
