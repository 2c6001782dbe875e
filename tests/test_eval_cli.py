"""Running lm-eval on extrapolated pairs: the ``hfx`` model type, ``hf-extrapolate eval``, and stock ``lm_eval``
on an exported folder (all offline, on tiny local models)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  (fill lm-eval's model registry before hfx joins it, as the command does)
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from transformers import GenerationMixin

from hf_extrapolate import ExtrapolatedForCausalLM
from hf_extrapolate.cli import main
from hf_extrapolate.evaluation import command
from hf_extrapolate.evaluation.lm_eval_model import ExtrapolatedHFLM, parse_weights

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "eval_tasks"
PROMPTS = ("<|im_start|>user\nCompute 12 + 30.<|im_end|>\n<|im_start|>assistant\n", "Compute 7 * 6.")


@pytest.fixture(scope="module")
def folders(pair, pair_dir, tokenizer, tmp_path_factory) -> dict[str, str]:
    """Saved tiny RL and base models, and the pair exported (save_pretrained) with γ = 0 and γ = 0.5."""
    root = tmp_path_factory.mktemp("exported")
    for name, gamma in (("x0", 0.0), ("x05", 0.5)):
        ExtrapolatedForCausalLM(*pair, gamma=gamma, tokenizer=tokenizer).save_pretrained(root / name)
    folders = {name: pair_dir / name for name in ("rl", "base")} | {name: root / name for name in ("x0", "x05")}
    return {name: str(path) for name, path in folders.items()}


def greedy(lm: HFLM, prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    """Greedy completions through lm-eval's own batching and generation code (HFLM.generate_until)."""
    gen_kwargs = {"until": ["<|im_end|>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 16}
    requests = [Instance("generate_until", doc={}, arguments=(p, gen_kwargs), idx=0) for p in prompts]
    return lm.generate_until(requests, disable_tqdm=True)


def test_include_paths_put_the_task_folder_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    ours = str(TASKS_DIR)
    assert command.tasks_dir() == TASKS_DIR  # the editable install maps eval_tasks/ to hf_extrapolate.eval_tasks
    assert command.include_paths(None) == [ours]
    assert command.include_paths(os.pathsep.join(["mine", "", "theirs"])) == [ours, "mine", "theirs"]
    assert command.include_paths(["mine", ours, "eval_tasks"]) == [ours, "mine"]  # no folder twice


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> list:
    """The namespaces that `hf-extrapolate eval` hands to lm-eval's command line (which then does nothing)."""
    seen: list = []
    monkeypatch.setattr("lm_eval._cli.HarnessCLI.execute", lambda self, namespace: seen.append(namespace))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command sets sys.argv for lm-eval's parser
    return seen


@pytest.mark.parametrize("given", [[], ["--include_path", "mine"], ["--include_path=mine"]])
def test_eval_command_hands_every_argument_to_lm_eval(given: list, executed: list, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    args = ["--model", "hfx", "--model_args", "rl=a,base=b,threshold=-0.3", "--tasks", "hfx_aime24", "--limit", "3"]
    assert main(["eval", *args, *given]) == 0
    (namespace,) = executed
    assert (namespace.command, namespace.model, namespace.tasks, namespace.limit) == ("run", "hfx", ["hfx_aime24"], 3.0)
    assert namespace.include_path == [str(TASKS_DIR), *(["mine"] if given else [])]
    assert get_model("hfx") is ExtrapolatedHFLM
    assert get_model("hf").__name__ == "HFLM"  # registering hfx did not hide lm-eval's own models


@pytest.mark.parametrize("backend", [["--backend", "vllm"], ["--backend=vllm"]])
def test_backend_vllm_runs_hfx_as_hfx_vllm(backend: list, executed: list, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    args = ["--model", "hfx", "--model_args", "rl=a,base=b,gamma=0.5", "--tasks", "hfx_toy_arith"]
    assert main(["eval", *backend, *args]) == 0
    assert executed[0].model == "hfx_vllm" and executed[0].model_args == {"rl": "a", "base": "b", "gamma": 0.5}
    assert command.select_backend(["--model=hfx", "--backend", "vllm"]) == ["--model=hfx_vllm"]
    assert command.select_backend(["--backend", "hf", "--model", "hfx"]) == ["--model", "hfx"]


@pytest.mark.parametrize(
    "argv, message",
    [(["--backend", "tpu", "--model", "hfx"], "--backend must be one of hf, vllm, got 'tpu'"),
     (["--backend", "vllm", "--model", "hf"], "--backend vllm runs --model hfx")],
)  # fmt: skip
def test_backend_refuses_what_it_cannot_run(argv: list, message: str, capsys) -> None:
    assert main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_eval_command_keeps_the_include_path_of_a_config_file(executed: list, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: hfx\ntasks: hfx_toy_arith\ninclude_path: mine\n")
    assert main(["eval", "run", "--config", str(config)]) == 0
    assert executed[0].include_path == [str(TASKS_DIR), "mine"]
    assert main(["eval", "ls", "tasks"]) == 0  # `ls` and `validate` search the task folder too
    assert executed[1].include_path == [str(TASKS_DIR)]


def test_eval_without_the_extra_says_what_to_install(monkeypatch, capsys: pytest.CaptureFixture) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "math_verify" else find_spec(name))
    assert main(["eval", "--tasks", "hfx_toy_arith"]) == 2
    assert capsys.readouterr().err == (
        "hf-extrapolate eval: error: this needs math_verify, which is not installed: "
        'pip install "hf-extrapolate[eval]"\n'
    )


def test_tasks_path_prints_the_task_folder(capsys: pytest.CaptureFixture) -> None:
    assert main(["tasks-path"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == TASKS_DIR and (folder / "hfx_toy_arith.yaml").is_file()
    assert (folder / "data" / "toy_arith_test.jsonl").is_file()


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"base": "B"}, "needs rl="),
        ({"rl": "A", "base": "B", "pretrained": "C"}, "not pretrained="),
        ({"rl": "A", "base": "B", "top_p": 0.7}, "--gen_kwargs"),
        ({"rl": "A", "base": "B", "peft": "adapter"}, "does not support peft"),
    ],
)
def test_hfx_rejects_bad_model_args(model_args: dict, message: str, folders: dict) -> None:
    model_args = {key: folders["rl"] if value == "A" else value for key, value in model_args.items()}
    with pytest.raises(ValueError, match=message):
        ExtrapolatedHFLM(**{key: folders["base"] if value == "B" else value for key, value in model_args.items()})


def test_parse_weights() -> None:
    assert parse_weights("-0.1:1.1") == (-0.1, 1.1)
    assert parse_weights([0, 1]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="W_BASE:W_RL"):
        parse_weights("1")


def test_hfx_with_gamma_zero_generates_like_the_rl_model(folders: dict) -> None:
    alone = greedy(HFLM(pretrained=folders["rl"], device="cpu"))
    pair = greedy(ExtrapolatedHFLM(rl=folders["rl"], base=folders["base"], gamma=0.0, device="cpu"))
    # explicit placement: HFLM must neither move the pair nor send inputs to its default device ("cuda")
    placed = ExtrapolatedHFLM(
        rl=folders["rl"], base=folders["base"], gamma=0.5, device_map="cpu", base_device_map="cpu"
    )
    assert placed.device == torch.device("cpu")
    assert placed.max_length == 512  # the models' context (max_position_embeddings), not lm-eval's default 2048
    assert pair == alone
    assert greedy(placed) != alone  # γ = 0.5 changes the tiny pair's greedy text


def test_hfx_moves_task_sampling_into_the_selective_wrapper(folders: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = ExtrapolatedHFLM(
        rl=folders["rl"], base=folders["base"], gamma=0.1, select="delta_logp", threshold=-0.3, device="cpu"
    )
    model = lm.model
    seen: dict = {}

    def generate(self, inputs=None, generation_config=None, **kwargs):  # what transformers' generate is handed
        seen.update(kwargs, wrapper=self.extrapolation)
        return kwargs["input_ids"]

    monkeypatch.setattr(GenerationMixin, "generate", generate)
    context = torch.tensor([[5, 6, 7]])
    lm._model_generate(context, 8, [], do_sample=True, temperature=1.0, top_p=0.7, top_k=0)
    assert (seen["wrapper"].temperature, seen["wrapper"].top_p) == (1.0, 0.7)
    assert seen["do_sample"] is True and not {"temperature", "top_p", "top_k"} & set(seen)  # not applied again
    assert model.extrapolation.top_p == 1.0  # restored after the call
    seen.clear()
    lm._model_generate(context, 8, [], do_sample=False, temperature=0.0)
    assert seen["wrapper"].temperature == 0.0 and seen["do_sample"] is False
    with pytest.raises(ValueError, match="top_k"):
        lm._model_generate(context, 8, [], do_sample=True, temperature=1.0, top_k=20)


def run_lm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The stock `lm_eval` console entry point in a subprocess, importing this checkout's package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "lm_eval", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_lm_eval_ls_lists_every_task(tmp_path: Path) -> None:
    proc = run_lm_eval("ls", "tasks", "--include_path", str(TASKS_DIR), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("|hfx_")}
    expected = {path.stem for path in TASKS_DIR.glob("hfx_*.yaml")}
    assert names == expected
    assert {"hfx_math500", "hfx_aime24", "hfx_aime25", "hfx_amc23", "hfx_gsm8k", "hfx_toy_arith", "hfx_math"} < names


@pytest.mark.slow
def test_stock_lm_eval_on_an_exported_pair(folders: dict, tmp_path: Path) -> None:
    """`lm_eval --model hf` on exported folders, run from another directory; γ = 0 gives the RL model's text."""
    texts = {}
    for name in ("rl", "x0", "x05"):
        out = tmp_path / name
        proc = run_lm_eval(
            "--model", "hf", "--model_args", f"pretrained={folders[name]},trust_remote_code=True", "--device", "cpu",
            "--include_path", str(TASKS_DIR), "--tasks", "hfx_toy_arith", "--limit", "4", "--apply_chat_template",
            "--gen_kwargs", "max_gen_toks=24", "--output_path", str(out), "--log_samples", cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (results_file,) = out.glob("*/results_*.json")
        result = json.loads(results_file.read_text())["results"]["hfx_toy_arith"]
        assert result["sample_len"] == 4 and 0.0 <= result["avg@1,samples"] <= 1.0
        (samples_file,) = out.glob("*/samples_hfx_toy_arith_*.jsonl")
        texts[name] = [json.loads(line)["resps"][0][0] for line in samples_file.read_text().splitlines()]
    assert texts["x0"] == texts["rl"]
    assert texts["x05"] != texts["rl"]


def _samples(output: Path) -> dict[int, list]:
    """doc_id -> model responses, from lm-eval's --log_samples output."""
    (path,) = output.rglob("samples_hfx_toy_arith_*.jsonl")
    return {row["doc_id"]: row["resps"] for row in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_data_parallel_eval_matches_one_process(folders: dict, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo): each holds one pair, results are gathered once and equal
    a single process's, response for response."""
    args = ["-m", "hf_extrapolate.cli", "eval", "--model", "hfx", "--apply_chat_template",
            "--model_args", f"rl={folders['rl']},base={folders['base']},gamma=0.5,select=delta_logp,threshold=-0.2",
            "--tasks", "hfx_toy_arith", "--limit", "6", "--gen_kwargs", "max_gen_toks=16", "--log_samples"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    runs = {
        "one": [*launch, "--num_processes", "1", *args, "--output_path", str(tmp_path / "one")],
        "two": [*launch, "--num_processes", "2", *args, "--output_path", str(tmp_path / "two")],
    }
    for name, cmd in runs.items():
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, f"{name}: {res.stderr[-2000:]}"
    one, two = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(6))
    assert one == two
    assert any(r != [[""]] for r in one.values())  # the pair did generate text
