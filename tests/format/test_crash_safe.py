"""SIGKILL a process in the middle of writing a large .dcm over an existing one, many times:
the target always holds the old or the new complete file, and stale temp files get cleaned up."""
import hashlib
import random
import signal
import subprocess
import sys
import time

import numpy as np

from dcm.encoder import encode_raw
from dcm.format import Model, ValueInfo, read, write

WRITER = r"""
import sys
import numpy as np
from dcm.encoder import encode_raw
from dcm.format import Model, ValueInfo, write

def model(seed):
    x = np.random.default_rng(seed).normal(size=4_000_000).astype(np.float32)  # 16 MB
    return Model([], [ValueInfo("t", "float32", [4_000_000])], [], {"t": encode_raw(x, "t")}, {})

models = [model(1), model(2)]
print("ready", flush=True)
i = 0
while True:
    write(sys.argv[1], models[i % 2])
    i += 1
"""


def _model(seed: int) -> Model:
    x = np.random.default_rng(seed).normal(size=4_000_000).astype(np.float32)
    return Model([], [ValueInfo("t", "float32", [4_000_000])], [], {"t": encode_raw(x, "t")}, {})


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkill_during_write_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "model.dcm"
    digests = set()
    for seed in (1, 2):
        write(target, _model(seed))
        digests.add(_digest(target))
    rng = random.Random(0)
    mid_write = 0
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert _digest(target) in digests  # old or new, complete
        read(target)
        mid_write += any(p.suffix == ".tmp" for p in tmp_path.iterdir())
    assert mid_write > 0  # some kills really landed inside a write
    write(target, _model(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.dcm"]


def test_temp_file_of_a_live_writer_is_left_alone(tmp_path):
    target = tmp_path / "m.dcm"
    live = tmp_path / f".m.dcm.{1}.abc.tmp"  # pid 1 is always running
    live.write_bytes(b"in progress")
    write(target, _model(3))
    assert live.exists()
