"""Each example in examples/ runs end to end in its reduced (--quick) form."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS = {"own_model.py": ["torch", "onnx"], "onnx_post_training.py": ["torch", "onnx", "onnxruntime"],
         "lightning_callback.py": ["torch", "onnx", "lightning"]}
PRODUCES = {"own_model.py": "tinyconvnet.dcm", "onnx_post_training.py": "mlp.dcm",
            "lightning_callback.py": "lit_mlp.dcm"}


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_runs(script, tmp_path):
    for module in NEEDS[script]:
        pytest.importorskip(module)
    r = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / PRODUCES[script]).stat().st_size > 0
    assert "error" in r.stdout or "OK" in r.stdout
