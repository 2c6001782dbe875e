"""`output_folder`: results appear whole or not at all, and a folder's own files are never lost."""

from __future__ import annotations

import hashlib

import pytest
from conftest import folder_digest as digest

from hf_extrapolate.outputs import check_output_folder, output_folder


def test_writes_a_new_folder_and_leaves_no_temporaries(tmp_path):
    with output_folder(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert digest(tmp_path / "out") == {"a.txt": hashlib.sha256(b"a").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_a_folder_with_files_and_keeps_them(tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "mine.bin").write_bytes(b"precious")
    before = digest(out)
    with pytest.raises(ValueError, match=r"already holds files.*--overwrite"), output_folder(out):
        pytest.fail("the block must not run")
    assert digest(out) == before
    with pytest.raises(ValueError, match="is a file"):
        check_output_folder(out / "mine.bin")


def test_a_failure_inside_the_block_keeps_the_old_folder(tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "old.txt").write_text("old")
    before = digest(out)
    with pytest.raises(KeyboardInterrupt), output_folder(out, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_overwrite_replaces_only_when_done(tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with output_folder(out, overwrite=True) as tmp:
        assert (out / "old.txt").exists()  # still there while the new results are being written
        (tmp / "new.txt").write_text("new")
    assert sorted(digest(out)) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
