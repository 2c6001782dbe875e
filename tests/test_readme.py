"""The README says only what is true: its command lines parse with the commands they name, the options its prose
promises exist there, and the lines that can run offline do run (on the tiny test pair where the README writes
`ID` for a model: the test says so by substituting it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hf_extrapolate.cli import build_parser
from hf_extrapolate.evaluation.command import select_backend

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def command_lines() -> list[str]:
    """Every shell line of the README's ```bash blocks: continuations joined, comments and blanks dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def hfx_commands() -> list[list[str]]:
    """The `hf-extrapolate ...` commands of the README (also after `&&`, or launched by accelerate), as argv."""
    found = []
    for line in command_lines():
        for part in line.split("&&"):
            words = shlex.split(part)
            if words[:1] == ["hf-extrapolate"]:
                found.append(words[1:])
            elif words[:4] == ["accelerate", "launch", "-m", "hf_extrapolate.cli"]:
                found.append(words[4:])
    return found


def test_the_readme_has_command_lines() -> None:
    names = {argv[0] for argv in hfx_commands()}
    assert {"quickstart", "generate", "export", "eval", "analyze", "train-toy", "bench"} <= names


@pytest.mark.parametrize("argv", hfx_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_parses(argv: list[str]) -> None:
    """Each command line parses with the command it names (lm-eval's own parser for `eval`)."""
    parser, _ = build_parser(argv[0])
    args, unknown = parser.parse_known_args(argv)
    assert not unknown, f"hf-extrapolate {argv[0]} has no option {unknown}"
    if argv[0] == "eval":
        pytest.importorskip("lm_eval")
        from lm_eval._cli import HarnessCLI

        saved = sys.argv
        sys.argv = ["lm-eval", *select_backend(args.lm_eval_args)]
        try:
            HarnessCLI().parse_args()  # exits (fails the test) on an option lm-eval does not have
        finally:
            sys.argv = saved


def options_of(command: str) -> set[str]:
    if command == "demo/app.py":
        sys.path.insert(0, str(ROOT / "demo"))
        try:
            import app
        finally:
            sys.path.remove(str(ROOT / "demo"))
        parser = app.build_parser()
    else:
        parser = build_parser(command)[1].choices[command]
    return {option for action in parser._actions for option in action.option_strings}


def test_the_options_the_prose_promises_exist() -> None:
    """"`generate`, `export`, ... take `--dtype`, ..." and "Commands that write a folder (...) refuse ... unless
    `--overwrite`": each named command has each named option."""
    take = re.search(r"((?:`[\w/.-]+`[, ]+(?:and )?)+)take (.+?`--dry-run`)", README, flags=re.S)
    assert take, "the README's sentence on the shared loading options moved: update this test with it"
    commands = re.findall(r"`([\w/.-]+)`", take.group(1))
    options = re.findall(r"`(--[\w-]+)`", take.group(2))
    assert commands == ["generate", "export", "analyze", "demo/app.py"] and len(options) == 7
    for command in commands:
        assert set(options) <= options_of(command), command
    writers = re.search(r"Commands that\s+write a folder \(([^)]*)\)", README)
    assert writers, "the README's sentence on commands that write a folder moved: update this test with it"
    for named in re.findall(r"`([^`]+)`", writers.group(1)):
        command, *needs = named.split()
        assert {"--overwrite", *needs} <= options_of(command), named
    assert "without `--rl/--base`, `generate`, `export`, `analyze` and the demo use" in README
    for command in ("generate", "export", "analyze"):
        assert {"--rl", "--base"} <= options_of(command)


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def offline_lines(pair_dir: Path) -> list[list[str]]:
    """The README's command lines that run offline, with `ID` the tiny pair's folders (rl for --rl, base for
    --base) and `...` a toy prompt; lines that download (hub tasks), train, serve or take long are left out."""
    chosen = []
    for argv in hfx_commands():
        text = " ".join(argv)
        if argv[0] in ("generate", "export") and "--rl ID" in text:
            words = [*argv]
            for i, word in enumerate(words):
                if word == "ID":
                    words[i] = str(pair_dir / ("rl" if words[i - 1] == "--rl" else "base"))
                elif word == "...":
                    words[i] = "Compute 12+3."
            if argv[0] == "generate" and "--dry-run" not in words:
                words += ["--max-new-tokens", "8"]  # the README line's default is 256 tokens
            chosen.append(["hf-extrapolate", *words])
    return chosen


@pytest.mark.slow  # five commands in fresh processes and an lm_eval run: about a minute
def test_readme_offline_lines_run(pair_dir: Path, tmp_path: Path) -> None:
    """`generate`, `export` and `--dry-run` exactly as the README writes them (on the tiny pair, 8 new tokens);
    then the README's stock `lm_eval` line on the exported folder, limited to 2 problems."""
    lines = offline_lines(pair_dir)
    assert [argv[1] for argv in lines] == ["generate", "export", "generate"]
    for argv in lines:
        done = _run(argv, tmp_path)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stderr[-2000:]}"
    assert (tmp_path / "pair" / "config.json").exists()
    (stock,) = [line for line in command_lines() if line.startswith("lm_eval ")]
    tasks_path = _run(["hf-extrapolate", "tasks-path"], tmp_path).stdout.strip()
    argv = shlex.split(stock.replace('"$(hf-extrapolate tasks-path)"', shlex.quote(tasks_path)))
    pytest.importorskip("lm_eval")
    done = _run([*argv, "--limit", "2", "--gen_kwargs", "max_gen_toks=8"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hfx_toy_arith" in done.stdout
