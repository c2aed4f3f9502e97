"""AlexNet- and VGG-16-size models: encode time and memory, load time, file size, latency, memory.

    python -m benchmarks.scale [--models alexnet vgg16] [--workdir DIR]

Weights are seeded random (pretrained weights cannot be downloaded here), pruned to the paper's
per-layer densities (Tables 4 and 5) and coded with its bit widths (8-bit conv / 5-bit fc codes,
5-bit index); sizes and speeds do not depend on the weights having been trained. Each measured
step runs in a fresh process, so its peak RSS and load time are its own:

- encode: the pruned dense ONNX file -> .dcm (``dcm convert``'s path), with a profile by stage;
- load: ``dcm.InferenceSession(path)`` (open, verify CRCs, decode into CSR/dense kernels) vs
  ``onnxruntime.InferenceSession`` on the dense ONNX of the same weights; RSS after load;
- latency at batch 1 (and 64), CPU, 2 threads, dcm vs onnxruntime.

Prints tables, writes benchmarks/results/scale.json.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Paper Table 4 (AlexNet) and Table 5 (VGG-16): fraction of weights kept, in layer order.
DENSITY = {
    "alexnet": {"conv": [0.84, 0.38, 0.35, 0.37, 0.37], "fc": [0.09, 0.09, 0.25]},
    "vgg16": {"conv": [0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36],
              "fc": [0.04, 0.04, 0.23]},
}
INPUT = {"alexnet": (3, 227, 227), "vgg16": (3, 224, 224)}
PAPER_MB = {"alexnet": 6.9, "vgg16": 11.3}  # Table 1, compressed size
CODE_BITS = {"conv": 8, "fc": 5}
INDEX_BITS = {"conv": 5, "fc": 5}
THREADS = 2


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """VmHWM: this process image's peak. (ru_maxrss survives exec, so a child started by a big
    parent would report the parent's peak.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def build_module(name: str):
    """The zoo model with seeded random weights, pruned to the paper's per-layer densities."""
    import torch

    from benchmarks.common import prune_module
    from dcm import zoo

    torch.manual_seed(0)
    module = getattr(zoo, name)().eval()
    convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    density = {**dict(zip(convs, DENSITY[name]["conv"])), **dict(zip(fcs, DENSITY[name]["fc"]))}
    prune_module(module, density)
    return module


def make_onnx(name: str, path: Path) -> dict:
    """The pruned model as a dense ONNX file (what a user would hand to ``dcm convert``)."""
    import torch

    from dcm.converters.torch_in import torch_to_onnx_bytes

    module = build_module(name)
    t = time.perf_counter()
    path.write_bytes(torch_to_onnx_bytes(module, torch.zeros(1, *INPUT[name]), ("input",), ("output",)))
    weights = sum(p.numel() for p in module.parameters())
    return {"export_s": time.perf_counter() - t, "parameters": weights, "float32_bytes": 4 * weights,
            "onnx_bytes": path.stat().st_size}


STAGES = {  # profile rows to report: (module path fragment, function name)
    "read ONNX + to numpy": [("onnx_in.py", "load_onnx"), ("onnx_in.py", "__init__")],
    "k-means (weight sharing)": [("kmeans.py", "kmeans_1d"), ("kmeans.py", "assign")],
    "Huffman tables": [("huffman.py", "code_lengths")],
    "Huffman coding": [("huffman.py", "encode_stream")],
    "relative index": [("relindex.py", "encode_positions")],
    "serialize + atomic write": [("writer.py", "write")],
}


def step_encode(onnx_path: str, out: str) -> dict:
    from dcm.converters import ConvertOptions, from_onnx
    from dcm.format import write

    base = _rss_mib()
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    model = from_onnx(onnx_path, ConvertOptions(code_bits=dict(CODE_BITS), index_bits=dict(INDEX_BITS)))
    write(out, model)
    prof.disable()
    total = time.perf_counter() - t
    st = pstats.Stats(prof)
    stages = {}
    for label, keys in STAGES.items():
        stages[label] = sum(v[3] for (file, _, fn), v in st.stats.items()  # v[3]: cumulative time
                            if any(file.endswith(f) and fn == f_name for f, f_name in keys))
    return {"encode_s": total, "stages_s": stages, "peak_rss_mib": _peak_mib(), "baseline_rss_mib": base,
            "dcm_bytes": os.path.getsize(out)}


def _time_runs(fn, batch: int, shape: tuple[int, ...]) -> float:
    from benchmarks.common import timeit

    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    return timeit(lambda: fn(x), min_time=2.0, max_reps=50)


def step_load_dcm(path: str, batches: list[int], shape: tuple[int, ...]) -> dict:
    import dcm

    base = _rss_mib()
    t = time.perf_counter()
    sess = dcm.InferenceSession(path, threads=THREADS)
    load = time.perf_counter() - t
    rss = _rss_mib()
    kernels = [k for k in sess.describe() if "kernel" in k]
    latency = {b: _time_runs(lambda x: sess.run(None, {"input": x}), b, shape) for b in batches}
    return {"load_s": load, "rss_after_load_mib": rss, "rss_delta_mib": rss - base,
            "sparse_layers": sum(k["kernel"] == "sparse" for k in kernels), "layers": len(kernels),
            "latency_s": latency}


def step_load_ort(path: str, batches: list[int], shape: tuple[int, ...]) -> dict:
    import onnxruntime as ort

    base = _rss_mib()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    t = time.perf_counter()
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t
    rss = _rss_mib()
    latency = {b: _time_runs(lambda x: sess.run(None, {"input": x}), b, shape) for b in batches}
    return {"load_s": load, "rss_after_load_mib": rss, "rss_delta_mib": rss - base, "latency_s": latency}


def step_gpu(path: str, name: str, batches: list[int], device: str = "cuda") -> dict:
    """dcm's GPU backend vs the same pruned model dense in torch on the GPU, numpy in and out.

    ``device="torch-cpu"`` runs the same code on the CPU (a dry run where no GPU is lent).
    """
    import torch

    import dcm

    torch_device = "cpu" if device == "torch-cpu" else device
    module = build_module(name).to(torch_device)
    rows = {}
    def dense(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(torch_device)).cpu().numpy()

    for b in batches:
        x = np.random.default_rng(0).normal(size=(b, *INPUT[name])).astype(np.float32)
        t = time.perf_counter()
        sess = dcm.InferenceSession(path, device=device, batch_hint=b)
        load = time.perf_counter() - t
        diff = np.abs(sess.run(None, {"input": x})[0] - dense(x)).max()
        rows[b] = {"dcm_s": _time_runs(lambda xb: sess.run(None, {"input": xb}), b, INPUT[name]),
                   "torch_s": _time_runs(dense, b, INPUT[name]), "load_s": load,
                   "max_abs_diff": float(diff),
                   "sparse_layers": sum(k.get("kernel") == "sparse" for k in sess.describe())}
    name_ = torch.cuda.get_device_name() if torch_device.startswith("cuda") else "torch on CPU (dry run)"
    return {"device": name_, "batches": rows}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--step", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    if out.returncode:
        raise RuntimeError(f"step {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, workdir: Path, batches: list[int], gpu: str | None) -> dict:
    onnx_path, dcm_path = workdir / f"{name}.onnx", workdir / f"{name}.dcm"
    row = {"model": name, **make_onnx(name, onnx_path)}
    row["encode"] = _child("encode", str(onnx_path), str(dcm_path))
    row["load_dcm"] = _child("load-dcm", str(dcm_path), name, *map(str, batches))
    row["load_ort"] = _child("load-ort", str(onnx_path), name, *map(str, batches))
    if gpu:
        row["gpu"] = _child("gpu", str(dcm_path), name, gpu, "1", "64")
    return row


def report(rows: list[dict]) -> None:
    print("\n| model | params | dense fp32 | .dcm | ratio | paper | encode | peak RSS (x fp32) | "
          "load dcm | ort session | load ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e, d, o = r["encode"], r["load_dcm"], r["load_ort"]
        fp32 = r["float32_bytes"]
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {fp32 / 2**20:.0f} MiB | {e['dcm_bytes'] / 2**20:.2f} MiB | "
              f"{fp32 / e['dcm_bytes']:.1f}x | {PAPER_MB[r['model']]} MB ({fp32 / 1e6 / PAPER_MB[r['model']]:.0f}x) | "
              f"{e['encode_s']:.1f} s | {e['peak_rss_mib']:.0f} MiB ({e['peak_rss_mib'] * 2**20 / fp32:.2f}x) | "
              f"{d['load_s']:.2f} s | {o['load_s']:.2f} s | {d['load_s'] / o['load_s']:.2f}x |")
    print("\nencode time by stage (cumulative seconds, cProfile):")
    print("| model | " + " | ".join(STAGES) + " |")
    print("|---|" + "---:|" * len(STAGES))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r['encode']['stages_s'][k]:.1f}" for k in STAGES) + " |")
    print(f"\nlatency and memory, CPU, {THREADS} threads (ratio < 1: dcm faster / smaller):")
    print("| model | batch | dcm | onnxruntime | ratio | RSS after load dcm | ort | sparse layers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, o = r["load_dcm"], r["load_ort"]
        for b, t in d["latency_s"].items():
            to = o["latency_s"][b]
            print(f"| {r['model']} | {b} | {t * 1e3:.1f} ms | {to * 1e3:.1f} ms | {t / to:.2f}x | "
                  f"{d['rss_after_load_mib']:.0f} MiB | {o['rss_after_load_mib']:.0f} MiB | "
                  f"{d['sparse_layers']}/{d['layers']} |")
    gpu_rows = [r for r in rows if "gpu" in r]
    if gpu_rows:
        print(f"\nGPU ({gpu_rows[0]['gpu']['device']}): dcm CUDA backend vs torch dense, numpy in and out:")
        print("| model | batch | dcm | torch dense | ratio | max abs diff | sparse layers |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in gpu_rows:
            for b, g in r["gpu"]["batches"].items():
                print(f"| {r['model']} | {b} | {g['dcm_s'] * 1e3:.2f} ms | {g['torch_s'] * 1e3:.2f} ms | "
                      f"{g['dcm_s'] / g['torch_s']:.2f}x | {g['max_abs_diff']:.2g} | {g['sparse_layers']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["alexnet", "vgg16"], choices=sorted(DENSITY))
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--workdir", help="keep the .onnx and .dcm files here")
    p.add_argument("--gpu", nargs="?", const="cuda", choices=["cuda", "torch-cpu"],
                   help="add dcm's GPU backend vs torch dense on the GPU, batch 1 and 64 (torch-cpu: dry run)")
    p.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.step:
        kind, *rest = a.step
        if kind == "encode":
            result = step_encode(*rest)
        elif kind == "gpu":
            result = step_gpu(rest[0], rest[1], [int(b) for b in rest[3:]], rest[2])
        else:
            fn = step_load_dcm if kind == "load-dcm" else step_load_ort
            result = fn(rest[0], [int(b) for b in rest[2:]], INPUT[rest[1]])
        print(json.dumps(result))
        return 0
    from benchmarks.common import save

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(a.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in a.models:
            print(f"{name}: building, encoding, loading ...", file=sys.stderr)
            rows.append(measure(name, workdir, a.batches, a.gpu))
    report(rows)
    print(f"\nwrote {save('scale', {'threads': THREADS, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
