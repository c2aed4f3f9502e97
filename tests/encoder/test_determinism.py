"""Same model, same bytes: across processes, hash seeds and thread counts (torch export included)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

ENCODE = r"""
import hashlib, sys
import torch
from dcm.converters import ConvertOptions, from_torch
from dcm.format import to_bytes
from dcm.zoo import LeNet5

torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[1]))
net = LeNet5().eval()
opts = ConvertOptions(sparsity=0.8, index_bits={"conv": "auto", "fc": 5}, metadata={"run": "determinism"})
model = from_torch(net, torch.zeros(1, 1, 28, 28), options=opts, code_bits={"conv": 8, "fc": 5},
                   exporter="torchscript")  # the encoder is under test; tracing is fastest in 4 fresh processes
print(hashlib.sha256(to_bytes(model)).hexdigest())
"""

RUNS = [("0", "1"), ("1", "2"), ("12345", "2"), ("random", "1")]


def test_encoding_is_identical_across_processes():
    digests = set()
    for hash_seed, threads in RUNS:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": threads,
               "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", ENCODE, threads], env=env, capture_output=True, text=True,
                             check=True)
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1, digests
