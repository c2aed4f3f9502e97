"""Files dcm writes get the mode a plain open() gives them, so other users can read a shipped model."""
import os
import stat

import pytest

from dcm.format.writer import atomic_write_bytes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_respects_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "m.dcm", b"new")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m.dcm") == _mode(tmp_path / "plain") == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_overwrite_keeps_the_existing_mode(tmp_path, mode):
    target = tmp_path / "m.dcm"
    target.write_bytes(b"old")
    target.chmod(mode)
    old = os.umask(0o077)  # a stricter umask must not tighten a file that already exists
    try:
        atomic_write_bytes(target, b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert _mode(target) == mode
