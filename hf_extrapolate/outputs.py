"""Writing a command's results into a folder without ever losing what the folder held before."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse, with one line, a ``path`` that is a file, or a folder that holds anything unless ``overwrite``.

    Call it before any long work, so a bad ``--out`` fails at once instead of after the run.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; choose a folder to write")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"{option} {path} already holds files; choose a new folder, or pass --overwrite to replace it")
    return path


@contextmanager
def output_folder(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path`` to write into; move it into place only when the block succeeds.

    The old contents of ``path`` (replaced only with ``overwrite``, see `check_output_folder`) stay untouched
    until the new folder is complete; an error or interruption (Ctrl-C, SIGTERM turned into an exception) removes
    the temporary and leaves ``path`` as it was.
    """
    path = check_output_folder(path, overwrite=overwrite, option=option).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # an empty folder, or one the user asked to replace: swap, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_json(path: Path, compute: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """The JSON in ``path`` if a run stored it there; else ``compute()``, stored whole (written to a temporary,
    then renamed: an interrupted run leaves nothing, and is done again next time). ``what`` names the run in the
    one-line notice printed on reuse. Multi-seed experiments key ``path`` by every setting of one seed's run, so
    that a stopped run resumes where it stopped."""
    if path.is_file():
        print(f"hf-extrapolate: {what} already done; reusing {path}", file=sys.stderr)
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return result


def settings_key(*settings: Any) -> str:
    """A short hash of JSON-able settings (what makes two runs the same run)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
