"""The fuzzer's harness (benchmarks/fuzz.py, benchmarks/fuzz_onnx.py): its seeds reach every compiled
kernel, the isolation catches crashes, hangs and huge allocations of native code, and a campaign
records what it exercised. The campaigns themselves are run by hand and by scripts/sanitize.sh."""
import os
import random
import signal
import time
from collections import Counter

import numpy as np
import pytest

from benchmarks import fuzz
from dcm.runtime.cpu import REGISTRY, native

onnx_fuzz = pytest.importorskip("benchmarks.fuzz_onnx")


def test_hand_made_seeds_run_and_reach_every_compiled_kernel():
    if native.SparseMatrix is None:
        pytest.skip("built without the compiled kernels")
    kernels = fuzz.kernel_names(reachable=True)
    assert {"SparseMatrix.matvec", "SparseMatrix.matmat", "SparseConv.run", "pool2d"} <= set(kernels)
    with fuzz.counting_kernels() as calls:
        assert [fuzz.check(s) for s in fuzz.seeds()] == ["ok"] * len(fuzz.seeds())
    assert set(calls) == set(kernels)
    assert native.SparseMatrix.__name__ == "SparseMatrix"  # the originals are back


@pytest.mark.parametrize("build", onnx_fuzz.BUILT, ids=lambda b: b.__name__)
def test_built_onnx_seeds_convert_and_run(build):
    name, data, feeds = build()
    ran = Counter()
    assert onnx_fuzz.convert_and_run(data, feeds, ran) == "ok"
    families = {"transformer": {"MatMul", "Softmax", "LayerNormalization", "Gelu"},
                "recurrent": {"LSTM", "GRU", "RNN"}, "upsampling": {"ConvTranspose", "Resize"}}[name]
    assert families <= set(ran) <= set(REGISTRY)


def _abort() -> str:
    os.abort()


def _sleep() -> str:
    time.sleep(30)
    return "late"


def _allocate() -> str:
    return str(len(bytearray(8 << 30)))


def _fail() -> str:
    raise KeyError("planted")


@pytest.mark.parametrize("fn, outcome, detail", [
    (lambda: "ok", "ok", ""),
    (_fail, "crash", "KeyError: 'planted'"),
    (_abort, "crash", "killed by SIGABRT"),  # native code dying takes the child, not the campaign
    (_sleep, "hang", ""),
    (_allocate, "crash", "MemoryError"),  # 8 GiB against a 2 GiB address space
])
def test_isolated_reports_answers_crashes_hangs_and_huge_allocations(fn, outcome, detail):
    got, message = onnx_fuzz.isolated(fn, seconds=1, memory=2 << 30)
    assert got == outcome and detail in message


def test_converter_fuzzing_runs_mutants_in_isolation():
    rng = random.Random(0)
    ran, outcomes = Counter(), Counter()
    name, data, feeds = onnx_fuzz.BUILT[0]()
    assert onnx_fuzz.check_conversion(data, feeds, 10, 4 << 30, ran) == ("ok", "")
    assert "MatMul" in ran  # the child's ops come back
    assert onnx_fuzz.check_conversion(b"not a protobuf", feeds, 10, 4 << 30, ran)[0] == "rejected"
    for _ in range(10):
        mutant = onnx_fuzz.mutate_onnx(data, rng)
        assert mutant != data
        outcomes[onnx_fuzz.check_conversion(mutant, feeds, 10, 4 << 30, ran)[0]] += 1
    assert sum(outcomes.values()) == 10 and set(outcomes) <= {"ok", "converted", "rejected", "crash", "hang"}


def test_hostile_feeds_change_one_input():
    rng = random.Random(1)
    feeds = {"x": np.ones((2, 3), np.float32), "i": np.array([0, 1], np.int64)}
    changed = 0
    for _ in range(40):
        out = fuzz.mutate_feeds(feeds, rng)
        diff = [k for k in feeds if out[k].shape != feeds[k].shape or out[k].dtype != feeds[k].dtype
                or not np.array_equal(out[k], feeds[k], equal_nan=False)]
        assert len(diff) <= 1
        changed += len(diff)
    assert changed > 30
    assert np.array_equal(feeds["i"], [0, 1])  # the seed's own arrays are never changed


def test_campaign_records_kernels_and_ops(monkeypatch):
    """A small campaign in this process, on the hand-made seeds and the built ONNX models only (the
    backend node cases take a while to build): outcomes add up, kernels and ops are recorded."""
    built = [onnx_fuzz.BUILT[i]() for i in range(len(onnx_fuzz.BUILT))]
    op_seeds = tuple((fuzz.to_bytes(onnx_fuzz._converted(data)), feeds) for _, data, feeds in built)
    monkeypatch.setattr(fuzz, "op_seeds", lambda: op_seeds)
    monkeypatch.setattr(onnx_fuzz, "onnx_seeds", lambda: tuple(built))
    previous = signal.getsignal(signal.SIGALRM)
    stats = fuzz._campaign((3, 60, 0.2))
    assert signal.getsignal(signal.SIGALRM) is previous
    assert stats["tried"] == 60 and stats["convert"]["tried"] > 0
    assert sum(stats["outcomes"].values()) + sum(stats["convert"]["outcomes"].values()) == 60
    assert set(stats["kernels"]) <= set(fuzz.kernel_names()) and stats["kernels"]
    assert set(stats["ops_run"]) <= set(REGISTRY) and stats["ops_run"]
