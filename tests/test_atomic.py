"""Atomic outputs: a failure leaves the previous output intact and no partial folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthseg.utils.atomic import atomic_path, check_free_space, write_text_atomic


def test_folder_replaced_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_file_and_overwrite_flag(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_text_atomic(target, "1")
    write_text_atomic(target, "2")
    assert target.read_text() == "2"
    with pytest.raises(FileExistsError, match="already exists"), atomic_path(target, overwrite=False):
        pass


def test_free_space_check(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1, "a tiny file")
    with pytest.raises(OSError, match="not enough disk space for the test output"):
        check_free_space(tmp_path / "not" / "yet", 10**18, "the test output")


def test_leftovers_of_a_killed_run_are_cleaned_under_the_lock_and_matched_exactly(tmp_path: Path) -> None:
    from synthseg.utils.outputs import claim_output

    target = tmp_path / "out"
    (tmp_path / ".out.1234abcd.partial").mkdir()  # what SIGKILL mid-write leaves behind
    (tmp_path / ".out.9999ffff.old").write_text("x")
    (tmp_path / ".other.1234abcd.partial").mkdir()  # another output's: not ours to touch
    (tmp_path / ".out.v2.1234abcd.partial").mkdir()  # out.v2's (maybe live) temporary folder
    (tmp_path / ".out.backup.old").mkdir()  # the user's own hidden folder, named like a leftover
    with atomic_path(target, is_dir=True) as tmp:  # no lock held: atomic_path cleans nothing
        (tmp / "a").write_text("a")
    assert (tmp_path / ".out.1234abcd.partial").is_dir()
    (target / "a").unlink()  # an empty folder: claim_output may fill it
    with claim_output(target, command="test", overwrite=True) as tmp:  # the lock holder cleans its own only
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.1234abcd.partial", ".out.backup.old", ".out.lock", ".out.v2.1234abcd.partial", "out"
    ]  # fmt: skip


def test_derived_names_fit_the_file_system_whatever_the_output_name(tmp_path: Path) -> None:
    from synthseg.utils.atomic import SIBLINGS, is_leftover, sibling

    name = "n" * 250  # a legal name: the temporary name used to add 18 bytes and fail with ENAMETOOLONG
    target = tmp_path / name
    for kind in SIBLINGS:
        derived = sibling(target, kind, "0123abcd")
        assert len(derived.name.encode()) <= 255, kind
        assert derived.name != sibling(tmp_path / ("n" * 249 + "m"), kind, "0123abcd").name  # still distinct
    assert is_leftover(target, sibling(target, "partial", "0123abcd"))
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("a")
    assert (target / "a").read_text() == "a"
