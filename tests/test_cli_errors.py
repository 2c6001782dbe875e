"""Bad input gives one line `hf-extrapolate CMD: error: ...` and exit 2, before anything is loaded or trained;
Ctrl-C gives exit 130 and a short line; an argument error prints the sub-command's own usage."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import default_sigint

from hf_extrapolate.cli import Terminated, main
from hf_extrapolate.evaluation.lm_eval_model import ExtrapolatedHFLM
from hf_extrapolate.loading import check_device_map, check_dtype, load_pair

GPUS = torch.cuda.device_count()


BAD_OPTIONS = [
    (["--dtype", "float33"], "--dtype 'float33' is not a torch dtype; use auto, bfloat16, float16 or float32"),
    pytest.param(["--device-map", "cuda:7"], "--device-map 'cuda:7' needs CUDA device 7, but torch sees ",
                 marks=pytest.mark.skipif(GPUS > 7, reason="CUDA device 7 exists")),
    pytest.param(["--base-device-map", "cuda:1"], "--base-device-map 'cuda:1' needs CUDA device 1, but torch sees ",
                 marks=pytest.mark.skipif(GPUS > 1, reason="CUDA device 1 exists")),
    pytest.param(["--load-in-4bit"], "bitsandbytes 4-bit/8-bit loading needs a CUDA GPU and none is visible; drop "
                 "--load-in-4bit/--load-in-8bit (or use --dtype bfloat16)",  # the flags, not the Python keywords
                 marks=pytest.mark.skipif(GPUS > 0, reason="a CUDA GPU exists")),
]  # fmt: skip


def one_error_line(capfd, command: str) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"hf-extrapolate {command}: error: "), err
    return err[0].removeprefix(f"hf-extrapolate {command}: error: ")


@pytest.mark.parametrize("toy", [False, True], ids=["pair", "toy-pair"])
@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS)
@pytest.mark.parametrize("command", ["generate", "analyze", "export"])
def test_a_bad_loading_option_is_one_line_before_anything_runs(command, args, message, toy, pair_dir, tmp_path,
                                                               capfd, monkeypatch):  # fmt: skip
    """With --rl/--base nothing is loaded; with the toy pair (neither given) its training does not start."""
    monkeypatch.setenv("HF_EXTRAPOLATE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("hf_extrapolate.loading.AutoModelForCausalLM.from_pretrained", lambda *a, **k: pytest.fail())
    models = [] if toy else ["--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base")]
    extra = {"generate": ["--prompt", "x"], "analyze": ["--data", "toy", "--out", str(tmp_path / "o")],
             "export": ["--out", str(tmp_path / "o")]}[command]  # fmt: skip
    assert main([command, *models, *args, *extra]) == 2
    assert one_error_line(capfd, command).startswith(message)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("role", ["rl", "base"])
def test_a_file_given_as_a_model_folder_is_named_a_file(role, pair_dir, tmp_path, capfd):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0")
    models = {"rl": str(pair_dir / "rl"), "base": str(pair_dir / "base"), role: str(weights)}
    assert main(["generate", "--rl", models["rl"], "--base", models["base"], "--prompt", "x"]) == 2
    name = {"rl": "RL", "base": "base"}[role]
    assert one_error_line(capfd, "generate") == (
        f"the {name} model '{weights}' is a file, not a model folder; give its folder"
    )


LM_EVAL_LOG = re.compile(r"^\d{4}-\d{2}-\d{2}:\d{2}:\d{2}:\d{2} (INFO|WARNING) ")
BAD_MODEL_ARGS = [
    ("foo=1", "--model_args: LlamaForCausalLM.__init__() got an unexpected keyword argument 'foo'; hfx takes"),
    ("dtype=float33", "--model_args dtype 'float33' is not a torch dtype"),
    pytest.param("device_map=cuda:7", "--model_args device_map 'cuda:7' needs CUDA device 7",
                 marks=pytest.mark.skipif(GPUS > 7, reason="CUDA device 7 exists")),
]  # fmt: skip


@pytest.mark.parametrize(("model_arg", "message"), BAD_MODEL_ARGS)
def test_hfx_refuses_bad_model_args_with_a_value_error(model_arg, message, pair_dir):
    key, _, value = model_arg.partition("=")
    with pytest.raises(ValueError, match=re.escape(message)):
        ExtrapolatedHFLM(rl=str(pair_dir / "rl"), base=str(pair_dir / "base"), device="cpu", **{key: value})


@pytest.mark.slow
@pytest.mark.parametrize(("model_arg", "message"), BAD_MODEL_ARGS)
def test_bad_eval_model_args_are_one_line(model_arg, message, pair_dir):
    """lm-eval builds the model inside its own command line; the error still reaches `main` as one line (the
    other lines on stderr are lm-eval's own log). Slow: lm-eval indexes its task library first."""
    model_args = f"rl={pair_dir / 'rl'},base={pair_dir / 'base'},{model_arg}"
    cmd = [sys.executable, "-m", "hf_extrapolate.cli", "eval", "--model", "hfx", "--model_args", model_args,
           "--tasks", "hfx_aime24", "--limit", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert err[-1].startswith(f"hf-extrapolate eval: error: {message}"), err
    assert "Traceback" not in res.stderr
    assert all(LM_EVAL_LOG.match(line) or "it/s]" in line for line in err[:-1]), err  # log lines, loading bars


@pytest.mark.parametrize(("interrupt", "code", "word"), [(KeyboardInterrupt, 130, "interrupted"),
                                                         (Terminated, 143, "terminated")])  # fmt: skip
def test_ctrl_c_and_sigterm_are_one_line_and_their_exit_codes(interrupt, code, word, pair_dir, capfd, monkeypatch):
    def load(args):
        raise interrupt

    monkeypatch.setattr("hf_extrapolate.commands.load_from_args", load)
    assert main(["generate", "--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"), "--prompt", "x"]) == code
    assert capfd.readouterr().err.strip().splitlines() == [
        f"hf-extrapolate generate: {word}; results already written are kept"
    ]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main's SIGTERM handler is gone again


@pytest.mark.slow
def test_ctrl_c_while_generating_exits_130_and_keeps_the_text(pair_dir, tmp_path):
    """A real SIGINT in the middle of the stream (slow: a fresh Python process)."""
    rl = tmp_path / "rl"
    shutil.copytree(pair_dir / "rl", rl)
    for name in ("config.json", "generation_config.json"):  # never stops by itself
        config = json.loads((rl / name).read_text())
        config["eos_token_id"] = None
        (rl / name).write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "hf_extrapolate.cli", "generate", "--rl", str(rl), "--base", str(pair_dir / "base"),
           "--prompt", "12+3=", "--max-new-tokens", "1000000", "--gamma", "0.5"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    first = proc.stdout.read(1)  # the stream has begun
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "hf-extrapolate generate: interrupted; results already written are kept"
    assert "Traceback" not in err and len(first + out) > 0


def test_a_missing_extra_is_named_with_its_pip_install(capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.models", None)  # as if lm-eval were not installed
    assert main(["eval", "--model", "hfx", "--tasks", "hfx_aime24"]) == 2
    assert one_error_line(capfd, "eval").endswith('; pip install "hf-extrapolate[eval]"')


def test_an_argument_error_prints_the_sub_commands_usage(pair_dir, capsys):
    for argv, error in (
        (["generate", "--prompt", "x", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["analyze", "--rl", "a"], "the following arguments are required: --data, --out"),
        (["train-toy", "--set", "sft_problems=many"], "argument --set: sft_problems takes a int, got 'many'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2
        assert err[0].startswith(f"usage: hf-extrapolate {argv[0]} ")
        assert err[-1] == f"hf-extrapolate {argv[0]}: error: {error}"


def test_device_maps_are_checked_against_the_visible_gpus(pair_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for fine in ("auto", "cpu", "balanced", "cuda", "cuda:1", 1, {"model.layers.0": "cuda:0", "lm_head": "disk"}):
        check_device_map(fine)
    bad_maps = [("cuda:2", 2), (5, 5), ({"model.layers.0": 0, "lm_head": "cuda:3"}, 3), (torch.device("cuda", 2), 2)]
    for bad, index in bad_maps:
        with pytest.raises(ValueError, match=f"needs CUDA device {index}, but torch sees 2 CUDA devices"):
            check_device_map(bad, "--device-map")
    monkeypatch.setattr("hf_extrapolate.loading.AutoModelForCausalLM.from_pretrained", lambda *a, **k: pytest.fail())
    with pytest.raises(ValueError, match="base_device_map 'cuda:4' needs CUDA device 4"):
        load_pair(str(pair_dir / "rl"), str(pair_dir / "base"), base_device_map="cuda:4")


def test_dtypes_are_torch_dtypes():
    for fine in (None, "auto", "bfloat16", "torch.float16", torch.float32, "float64"):
        check_dtype(fine)
    for bad in ("float33", "Tensor", "cuda", "bf16"):
        with pytest.raises(ValueError, match="is not a torch dtype"):
            check_dtype(bad)
