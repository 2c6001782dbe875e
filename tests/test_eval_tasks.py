"""The lm-eval tasks in eval_tasks/: indexing, settings, data sources (hub layouts faked offline), local JSONL."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import datasets
import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from hf_extrapolate.evaluation.grading import INSTRUCTION, avg_at_k, metric_names, user_message
from hf_extrapolate.evaluation.tasks import (
    jsonl_dataset,
    normalize_doc,
    process_docs,
    process_results,
    read_problems,
    write_jsonl,
)

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval_tasks"
BENCHMARKS = ["hfx_math500", "hfx_aime24", "hfx_aime25", "hfx_amc23", "hfx_gsm8k", "hfx_toy_arith"]
VARIANTS = [
    "hfx_aime24_avg16",
    "hfx_aime24_avg32",
    "hfx_aime25_avg16",
    "hfx_aime25_avg32",
    "hfx_amc23_avg16",
    "hfx_amc23_avg32",
    "hfx_math500_avg4",
    "hfx_math500_avg16",
    "hfx_gsm8k_avg4",
    "hfx_gsm8k_avg16",
    "hfx_toy_arith_avg8",
]
GROUPS = ["hfx_math", "hfx_paper_avg32"]

# (dataset path, config, split, one record in the hub layout, expected answer): layouts checked on the hub cards
HUB = {
    "hfx_math500": (
        "HuggingFaceH4/MATH-500",
        None,
        "test",
        {
            "problem": "Find $x$.",
            "solution": "So $\\boxed{\\frac{1}{2}}$.",
            "answer": "\\frac{1}{2}",
            "subject": "Algebra",
            "level": 2,
            "unique_id": "test/algebra/1.json",
        },
        "\\frac{1}{2}",
    ),
    "hfx_aime24": (
        "HuggingFaceH4/aime_2024",
        None,
        "train",
        {"id": 60, "problem": " Find $m+n$. ", "solution": "...", "answer": "204", "url": "u", "year": "2024"},
        "204",
    ),
    "hfx_aime25": ("math-ai/aime25", None, "test", {"problem": "Find $n$.", "answer": "70", "id": "0"}, "70"),
    "hfx_amc23": ("math-ai/amc23", None, "test", {"id": 0, "question": "How many?", "answer": 27.0}, "27"),
    "hfx_gsm8k": (
        "openai/gsm8k",
        "main",
        "test",
        {"question": "How much?", "answer": "2 * 617 = 1234\n#### 1,234"},
        "1234",
    ),
    "hfx_math_algebra": (
        "EleutherAI/hendrycks_math",
        "algebra",
        "test",
        {"problem": "Solve.", "level": "Level 1", "type": "Algebra", "solution": "Hence $x=\\boxed{\\frac{3}{4}}$."},
        "\\frac{3}{4}",
    ),
}


@pytest.fixture(scope="module")
def manager() -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Serve each hub dataset from its record in HUB (every MATH subject gets the algebra record); no network.

    Returns the list of (path, name, split) requested.
    """
    by_source = {(path, name): (split, record) for path, name, split, record, _ in HUB.values()}
    requested: list[tuple] = []

    def load_dataset(path: str, name: str | None = None, **kwargs) -> datasets.DatasetDict:
        split, record = by_source[(path, "algebra" if path == "EleutherAI/hendrycks_math" else name)]
        requested.append((path, name, split))
        return datasets.DatasetDict({split: datasets.Dataset.from_list([record])})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return requested


def test_every_task_is_indexed(manager: TaskManager) -> None:
    assert set(BENCHMARKS + VARIANTS + GROUPS) <= set(manager.all_tasks)
    assert set(manager.all_groups) == set(GROUPS)
    assert manager.all_tags == ["hfx"]  # the tag `--tasks hfx` (every task with a file of its own)
    assert all(name.startswith("hfx_") for name in manager.all_subtasks + manager.all_groups)  # no built-in shadowed


@pytest.mark.parametrize("name", BENCHMARKS + VARIANTS)
def test_samples_filter_and_metrics_agree(name: str) -> None:
    """take_first_k keeps all `repeats` samples, and metric_list is what process_results returns for them."""
    cfg = load_yaml(TASKS_DIR / f"{name}.yaml", resolve_func=False)
    k = cfg["repeats"]
    assert cfg["filter_list"] == [{"name": "samples", "filter": [{"function": "take_first_k", "k": k}]}]
    assert [m["metric"] for m in cfg["metric_list"]] == metric_names(k)
    gen = cfg["generation_kwargs"]
    assert "\n\n" not in gen["until"]
    assert gen["repetition_penalty"] == 1.0  # a model's generation_config must not add one
    if k == 1:
        assert gen["do_sample"] is False
    else:
        assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"]) == (True, 1.0, 0.7, 0)


@pytest.mark.parametrize("name", [n for n in HUB if n != "hfx_math_algebra"])
def test_hub_tasks_read_and_normalise_their_dataset(name: str, manager: TaskManager, fake_hub: list) -> None:
    path, config, split, _, answer = HUB[name]
    task = manager.load(name)["tasks"][name]
    assert fake_hub == [(path, config, split)]
    (doc,) = list(task.eval_docs)
    assert doc["answer"] == answer
    assert task.doc_to_text(doc) == user_message(doc["problem"]) and doc_text_ends(task, doc)
    assert task.doc_to_target(doc) == answer


def test_math_group_reads_each_subject_and_takes_the_boxed_answer(manager: TaskManager, fake_hub: list) -> None:
    loaded = manager.load("hfx_math")
    tasks = loaded["tasks"]
    assert len(tasks) == 7 and len(fake_hub) == 7
    assert {name for _, name, _ in fake_hub} == {
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    }
    (algebra,) = [t for name, t in tasks.items() if name.endswith("hfx_math_algebra")]
    assert [doc["answer"] for doc in algebra.eval_docs] == [HUB["hfx_math_algebra"][4]]


def test_toy_task_reads_the_shipped_jsonl_from_any_directory(
    manager: TaskManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    task = manager.load("hfx_toy_arith")["tasks"]["hfx_toy_arith"]
    docs = list(task.eval_docs)
    assert len(docs) > 0 and set(docs[0]) == {"problem", "answer"}


def test_local_jsonl_override(manager: TaskManager, tmp_path: Path) -> None:
    """The documented override: a YAML that includes a task and points it at a local JSONL file."""
    write_jsonl([{"problem": "What is 1+1?", "answer": "2", "solution": "1+1=2"}], tmp_path / "mine.jsonl")
    (tmp_path / "aime24_local.yaml").write_text(
        f"include: {TASKS_DIR / 'hfx_aime24.yaml'}\n"
        "task: aime24_local\n"
        "custom_dataset: !function hf_extrapolate.evaluation.tasks.jsonl_dataset\n"
        "dataset_kwargs: {data_files: mine.jsonl}\n"
        "test_split: test\n"
    )
    task = manager.load(str(tmp_path / "aime24_local.yaml"))["tasks"]["aime24_local"]
    assert list(task.eval_docs) == [{"problem": "What is 1+1?", "answer": "2"}]
    assert task.config.generation_kwargs["max_gen_toks"] == 20000  # everything else comes from hfx_aime24


def test_jsonl_dataset_paths(tmp_path: Path) -> None:
    write_jsonl([{"problem": "p", "answer": 3}], tmp_path / "d.jsonl")
    yaml_path = str(tmp_path / "task.yaml")
    assert jsonl_dataset("d.jsonl", config_source=yaml_path, version=1.0)["test"][0] == {"problem": "p", "answer": "3"}
    assert len(jsonl_dataset(str(tmp_path / "d.jsonl"))["test"]) == 1
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        jsonl_dataset("missing.jsonl", config_source=yaml_path)


def test_write_jsonl_keeps_problem_and_answer(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "toy.jsonl"
    assert write_jsonl([{"problem": "1+2", "answer": "3", "solution": "..."}] * 2, out) == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"problem": "1+2", "answer": "3"}] * 2


def test_normalize_doc_rejects_records_without_fields() -> None:
    with pytest.raises(ValueError, match="problem"):
        normalize_doc({"text": "x"})


def test_process_results_takes_the_filtered_samples() -> None:
    doc = {"problem": "p", "answer": "2"}
    assert process_results(doc, [["\\boxed{2}", "\\boxed{3}"]])["avg@2"] == 0.5
    assert process_results(doc, ["\\boxed{2}"]) == {"avg@1": 1.0}


def doc_text_ends(task, doc) -> bool:
    return task.doc_to_text(doc).endswith("\n" + INSTRUCTION)


# one problem's k responses, each a shape the two paths must grade alike (the reference answer is "57")
RESPONSES = [
    ["12+45=57\n\\boxed{57}", "\\boxed{057}", "\\boxed{57.0}", "\\boxed{ 57 }"],
    ["57", "the answer is 57", "\\boxed{57", "\\boxed{}"],  # no box, unclosed box, empty box
    ["\\boxed{56} no: \\boxed{57}", "\\boxed{57} no: \\boxed{56}", "\\fbox{57}", "\\boxed{\\frac{114}{2}}"],
    ["\\boxed{58}", "\\boxed{5 7}", "\\boxed{57}\\boxed{", "\\boxed{57}.<|im_end|>"],
]


def test_quickstart_and_the_toy_task_grade_alike() -> None:
    """The quickstart's grading path (`grading.avg_at_k`) and hfx_toy_arith's `process_results` give the
    same per-problem avg@k, on the shipped problems and on edge-case responses."""
    pytest.importorskip("math_verify")
    shipped = read_problems(TASKS_DIR / "data" / "toy_arith_test.jsonl", 4)
    problems = [{"problem": p["problem"], "answer": "57"} for p in shipped]
    quickstart = avg_at_k(RESPONSES, [p["answer"] for p in problems])
    task = [process_results(doc, [responses])["avg@4"] for doc, responses in zip(problems, RESPONSES, strict=True)]
    assert quickstart == task
    # by hand: 057 and 57.0 count; no box, an unclosed or empty box, and a box followed by an unclosed one do not
    assert quickstart == [1.0, 0.0, 0.75, 0.25]


def test_read_problems_reads_what_eval_reads(tmp_path: Path) -> None:
    """A JSONL file the lm-eval tasks accept gives the same problems through `read_problems` (used by analyze)."""
    records = [
        {"Question": "Compute 1+2.", "Answer": "3"},
        {"problem": "Compute 5-1.", "answer": 4.0},
        {"question": "Sum?", "answer": "step #### 1,234"},
        {"problem": "Half?", "solution": "so \\boxed{\\frac{1}{2}}"},
    ]
    expected = [
        {"problem": "Compute 1+2.", "answer": "3"},
        {"problem": "Compute 5-1.", "answer": "4"},
        {"problem": "Sum?", "answer": "1234"},
        {"problem": "Half?", "answer": "\\frac{1}{2}"},
    ]
    for i, record in enumerate(records):  # one file each: `datasets` wants one type per column within a file
        path = tmp_path / f"{i}.jsonl"
        path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
        eval_rows = list(process_docs(jsonl_dataset(str(path))["test"]))
        assert read_problems(path) == eval_rows == [expected[i]] * 2
        assert read_problems(path, 1) == eval_rows[:1]
        path.write_text(json.dumps(record) + "\n\n" + json.dumps(record) + "\n")  # (datasets < 5 refuses blank lines)
        assert read_problems(path) == eval_rows


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"problem": "x", "answer": "1"}\n{"text": "y"}\n', ":2: a record needs a 'problem'"),
        ('{"problem": "x", "answer": "1"}\nnot json\n', ":2: not valid JSON"),
        ('[1, 2]\n', ":1: each line must be a JSON object"),
        ("\n\n", "holds no problems"),
    ],
)
def test_read_problems_rejects_bad_lines(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_problems(path)
    with pytest.raises(ValueError, match="no JSONL file"):
        read_problems(tmp_path / "missing.jsonl")


def _variant_generator():
    script = TASKS_DIR.parent / "scripts" / "generate_task_variants.py"
    spec = importlib.util.spec_from_file_location("generate_task_variants", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_variants_are_what_the_generator_writes(tmp_path, monkeypatch, capsys):
    """The committed _avgK files are the generator's output; an edited copy is caught and rewritten."""
    generator = _variant_generator()
    assert generator.main(["--check"]) == 0
    copy = tmp_path / "eval_tasks"
    shutil.copytree(generator.TASKS, copy)
    (copy / "_hfx_avg4.yaml").write_text("repeats: 5\n")
    monkeypatch.setattr(generator, "TASKS", copy)
    assert generator.main(["--check"]) == 1 and "_hfx_avg4.yaml differs" in capsys.readouterr().err
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0
