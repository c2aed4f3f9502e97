"""dcm/runtime/cpu/memory.py: freed large buffers stay in the process (glibc), an unknown setting of
DCM_KEEP_BUFFERS is refused, and a process with it off keeps glibc's policy."""
import os
import subprocess
import sys

import pytest

from dcm.runtime.cpu import memory

# A child process: the setting is once per process.
CHILD = """
import time, numpy as np
from dcm.runtime.cpu.memory import keep_freed_buffers
kept = keep_freed_buffers()
def faults():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.empty(48 << 20, np.uint8)[::4096] = 1  # a 48 MiB buffer, over glibc's largest mmap threshold
before = faults()
for _ in range(5):
    np.empty(48 << 20, np.uint8)[::4096] = 1  # freed and allocated again
print(kept, faults() - before)
"""


def _child(setting: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != memory.ENV}
    if setting is not None:
        env[memory.ENV] = setting
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_buffers_are_reused_without_page_faults():
    kept, faults = _child(None)
    if not kept:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert faults < 20  # each buffer is the last one's memory, its pages already there
    off, faults_off = _child("0")
    assert not off and faults_off >= 5 * 24  # a fresh mmap each time: 24 huge pages or 12288 small ones


def test_an_unknown_setting_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv(memory.ENV, "yes")
    with pytest.raises(ValueError, match="DCM_KEEP_BUFFERS='yes'"):
        memory.keep_freed_buffers()
