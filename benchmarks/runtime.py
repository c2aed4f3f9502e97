"""Latency of the dcm runtime vs onnxruntime (dense ONNX of the same decoded weights) and torch eager.

    python benchmarks/runtime.py [--quick]

Batch 1 and 64, single-threaded and default threads (dcm's dense kernels run on numpy's BLAS pool,
limited to the same count with threadpoolctl), for LeNet-300-100 and LeNet-5 pruned to the paper's
densities, an AlexNet fc6-fc8 stack (9%/9%/25%) and a VGG-16-style conv block, on standard-normal
input, and the LeNets also on real MNIST test images ("mnist"). With a CUDA GPU it adds dcm's GPU
backend vs torch dense on the GPU. Prints a table, writes benchmarks/results/runtime.json. Ratios
< 1 mean dcm is faster. "floor/ort" (fully connected models, batch 1, 1 thread): the bare compiled
(or scipy/BLAS) products of the weight layers alone, against onnxruntime's whole run.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn as nn
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, prune_module, save, timeit
from dcm import mnist, zoo
from dcm.converters import ConvertOptions, from_torch, to_onnx
from dcm.encoder.codec import decode_tensor
from dcm.runtime import InferenceSession
from dcm.runtime.cpu.matmul import WeightMatmul


def alexnet_fc() -> nn.Module:
    return nn.Sequential(nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))


def vgg_block() -> nn.Module:
    return nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2))


MODELS = {  # name: (factory, input shape without batch, kept fraction per layer)
    "lenet300": (zoo.LeNet300, (1, 28, 28), {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}),
    "lenet5": (zoo.LeNet5, (1, 28, 28), {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}),
    "alexnet_fc6-8": (alexnet_fc, (9216,), {"0": 0.09, "2": 0.09, "4": 0.25}),
    "vgg_conv_block": (vgg_block, (128, 28, 28), {"0": 0.35, "2": 0.35}),  # VGG conv layers keep 24-68%
}


# MNIST classifiers: also timed on real test images (scaled to [0, 1]: about 80% of the pixels are 0,
# which the batch-1 sparse kernel skips), besides the standard-normal input every model gets.
MNIST_MODELS = ("lenet300", "lenet5")


def build(name: str):
    factory, shape, density = MODELS[name]
    torch.manual_seed(0)
    module = factory().eval()
    prune_module(module, density)
    model = from_torch(module, torch.zeros(1, *shape), options=ConvertOptions(exact=True))
    return module, model, shape


def kernel_floor(model, sess: InferenceSession) -> float | None:
    """Batch-1 seconds of a fully connected model's weight products alone: one bare call of the
    compiled matvec (scipy's CSR matvec without it; BLAS gemv for dense layers) per layer on a dense
    random input, best of many, with no bias, activation or Python dispatch: what dcm would take if
    its Python cost nothing. None for models with other weight layers."""
    from scipy.sparse._sparsetools import csr_matvec

    layers = [(n, d) for n, d in zip(model.nodes, sess.describe()) if "kernel" in d]
    if any(n.op != "Gemm" for n, _ in layers):
        return None
    total = 0.0
    for node, d in layers:
        w = decode_tensor(model.tensors[node.inputs[1]]).astype(np.float32)
        w = w if node.attrs.get("transB", 0) else np.ascontiguousarray(w.T)  # [out, in]
        x = np.random.default_rng(0).standard_normal(w.shape[1]).astype(np.float32)
        y = np.zeros(w.shape[0], np.float32)
        if d["kernel"] == "sparse":
            mm = WeightMatmul("sparse", w, vectors=True)  # as a batch-1 session holds it
            if mm.native is not None:
                fn = lambda: mm.native.matvec(x, y)  # noqa: E731
            else:
                m = mm.blocks[0]
                fn = lambda: csr_matvec(m.shape[0], m.shape[1], m.indptr, m.indices, m.data, x, y)  # noqa: E731
        else:
            wt, row = np.ascontiguousarray(w.T), x[None]
            fn = lambda: row @ wt  # noqa: E731
        total += min(timeit(fn, min_time=0.05) for _ in range(5))
    return total


def run(quick: bool) -> dict:
    rows = []
    cores = os.cpu_count() or 1
    test_images = mnist.load()[1][0]
    for name in MODELS:
        module, model, shape = build(name)
        onnx_bytes = to_onnx(model).SerializeToString()
        for batch, source in [(b, s) for b in (1, 64) for s in (("random", "mnist") if name in MNIST_MODELS else ("random",))]:
            if quick and batch == 64 and name == "vgg_conv_block":
                continue
            x = (test_images[:batch] if source == "mnist"
                 else np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32))
            for threads in sorted({1, cores}):
                # dcm first, while no onnxruntime pool exists: onnxruntime's idle workers spin and, on
                # 2 cores, made dcm's 2-thread runs 1x-2.3x slower from one run to the next.
                dcm_sess = InferenceSession(model, threads=threads, batch_hint=batch)
                with threadpool_limits(threads):  # dcm's dense kernels run on numpy's BLAS pool
                    t_dcm = timeit(lambda: dcm_sess.run(None, {"input": x}))
                ort_sess = onnxruntime_session(onnx_bytes, threads)
                t_ort = timeit(lambda: ort_sess.run(None, {"input": x}))
                ort_sess = None  # its thread pool goes with it
                torch.set_num_threads(threads)
                xt = torch.from_numpy(x)
                with torch.no_grad():
                    t_torch = timeit(lambda: module(xt))
                kernels = sorted({k["kernel"] for k in dcm_sess.describe() if "kernel" in k})
                floor = None
                if batch == 1 and threads == 1 and source == "random":
                    with threadpool_limits(1):
                        floor = kernel_floor(model, dcm_sess)
                rows.append({"model": name, "input": source, "device": "cpu", "batch": batch, "threads": threads,
                             "dcm_ms": 1e3 * t_dcm, "onnxruntime_ms": 1e3 * t_ort, "torch_ms": 1e3 * t_torch,
                             "dcm_vs_onnxruntime": t_dcm / t_ort, "dcm_vs_torch": t_dcm / t_torch,
                             "kernel_floor_ms": None if floor is None else 1e3 * floor,
                             "floor_vs_onnxruntime": None if floor is None else floor / t_ort,
                             "dcm_kernels": "+".join(kernels)})
        if torch.cuda.is_available():
            gpu_module = module.cuda()
            for batch in (1, 64):
                x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                sess = InferenceSession(model, "cuda", batch_hint=batch)

                def torch_gpu():
                    with torch.no_grad():
                        return gpu_module(torch.from_numpy(x).cuda()).cpu()
                t_torch = timeit(torch_gpu)
                t_dcm = timeit(lambda: sess.run(None, {"input": x}))
                kernels = sorted({k["kernel"] for k in sess.describe() if "kernel" in k})
                rows.append({"model": name, "input": "random", "device": torch.cuda.get_device_name(), "batch": batch,
                             "threads": None,
                             "dcm_ms": 1e3 * t_dcm, "onnxruntime_ms": None, "torch_ms": 1e3 * t_torch,
                             "dcm_vs_onnxruntime": None, "dcm_vs_torch": t_dcm / t_torch,
                             "kernel_floor_ms": None, "floor_vs_onnxruntime": None,
                             "dcm_kernels": "+".join(kernels)})
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the slowest case (VGG block at batch 64)")
    args = ap.parse_args()
    result = run(args.quick)
    print(f"{'model':<16}{'input':<8}{'device':<24}{'batch':>6}{'thr':>5}{'dcm ms':>10}{'ort ms':>10}{'torch ms':>10}"
          f"{'dcm/ort':>9}{'dcm/torch':>10}{'floor/ort':>10}  kernels")
    for r in result["rows"]:
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{r['model']:<16}{r['input']:<8}{r['device'][:23]:<24}{r['batch']:>6}{f(r['threads'], 'd'):>5}{r['dcm_ms']:>10.3f}"
              f"{f(r['onnxruntime_ms'], '.3f'):>10}{r['torch_ms']:>10.3f}{f(r['dcm_vs_onnxruntime'], '.2f'):>9}"
              f"{r['dcm_vs_torch']:>10.2f}{f(r['floor_vs_onnxruntime'], '.2f'):>10}  {r['dcm_kernels']}")
    print(f"wrote {save('runtime', result)}")


if __name__ == "__main__":
    main()
