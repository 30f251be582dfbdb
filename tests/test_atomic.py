"""facelab.io.atomic: whole-or-nothing writes with ordinary file modes."""

import os
import stat

import pytest

from facelab.io.atomic import atomic_path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_new_file_gets_the_usual_mode_not_the_temp_files_owner_only_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"weights")
    finally:
        os.umask(old)
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
    assert _mode(tmp_path / "model.pt") == 0o666 & ~mask  # 0o644 / 0o640, not 0o600


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_path(target, ".pt") as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o640


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]
