"""The deployment path (read, validate, load and run on CPU) imports only numpy, scipy and bitarray:
no torch, onnx, tqdm or matplotlib, even when they are installed."""
import subprocess
import sys

from dcm.format import write
from tests.conftest import small_model

SCRIPT = r"""
import sys
import numpy as np
import dcm
sess = dcm.InferenceSession(sys.argv[1])
sess.run(None, {"x": np.ones((2, 12), np.float32)})
assert dcm.validate(sys.argv[1]) == []
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "tqdm", "matplotlib", "lightning") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_load_and_run_import_only_the_core_dependencies(tmp_path):
    write(tmp_path / "m.dcm", small_model())
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m.dcm")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "none"
