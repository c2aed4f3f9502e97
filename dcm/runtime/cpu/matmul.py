"""Y = W @ X for a decoded weight W [out, in] and activations X [in, n], sparse or dense.

scipy's CSR kernels release the GIL, so a large sparse W is split into row blocks that run on a
thread pool (AlexNet's fc6: 3.3 ms -> 1.9 ms on 2 threads). Where the compiled kernels were
built (``native``), a sparse W runs on them instead: product, bias and ReLU in one call; at batch 1
skipping the zero inputs a ReLU leaves, at batch n on packed panels of 32 activation rows read from,
and written back to, the activations' own [n, features] layout. Which of sparse and BLAS on a dense
copy multiplies a given row count is ``prefers_dense`` (measured break-even densities) or, with
``tune``, a timing of both (``tune.py``).
"""
from __future__ import annotations

import functools
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp

from dcm.encoder.codec import CsrParts
from dcm.runtime.cpu import blas, memory, native, pointconv, tune
from dcm.runtime.fusion import add_and_activate

try:  # scipy's own CSR x vector kernel, without the checks and conversions of ``A @ x``
    from scipy.sparse._sparsetools import csr_matvec as _csr_matvec  # private, unchanged since scipy 0.14
except ImportError:  # pragma: no cover - a future scipy; the public operator still works
    _csr_matvec = None

PARALLEL_MIN_NNZ = 200_000  # stored weights from which the scipy fallback splits W into row blocks
# The compiled sparse kernel against BLAS on the dense form by row count (one thread, the zoo's
# transformer layers [256, 1024], [1024, 256], [768, 256], [256, 256]; benchmarks/matmul_choice.py,
# docs/kernel-choice.md). From 8 rows the batched kernel (packed panels of 32 rows) on its AVX2 path
# wins up to a break-even density of 0.34-0.47 on layers of 256 inputs at 128-256 rows, but only
# 0.21-0.25 on 1024 inputs, whose panel no longer fits in L1 (the rule: 0.35 up to 512 inputs, 0.22
# above); on its AVX-512 path above 0.5 and 0.30-0.38 (0.30 above 512 inputs). From 2 to 7 rows
# sparse lost from 5-20% density on these layers (256x256 at 4 rows: 1.04x at 5%).
# Layers larger than those measured (262k weights) keep sparse at few rows: there the product is
# bound by memory traffic, where the sparse form's fewer bytes count (AlexNet's fc6 at batch 1-7).
SPARSE_MAX_DENSITY_FEW_ROWS = 0.05
SPARSE_MAX_DENSITY_MANY_ROWS = 0.35
SPARSE_MAX_DENSITY_WIDE = 0.22
SPARSE_MAX_DENSITY_WIDE_AVX512 = 0.30
WIDE_INPUTS = 512  # inputs past which a 32-row panel (128 bytes per input) outgrows L1
# From 8 to 15 rows a panel row is one register (8 lanes at 8 rows): each stored weight costs two loads
# (its value, broadcast, and the panel row) for one register of multiply-adds, where the packed dense
# kernel gets 16 full registers from 10 loads at 8 rows. How far sparse then wins depends on the loads
# a core issues a cycle. At 8 rows the break-even density was above 0.5 for three of the four layers
# on a Zen 5 on the AVX-512 path (0.22 on [256, 256]), but 0.10-0.13 on an Intel Xeon with AVX-512
# (sparse at 30% kept took 1.5-2.1x the dense time) and 0.15 ([256, 256]) on a Zen 3's AVX2 path; at
# 16 rows the Xeon's were 0.20-0.30. So below 16 rows the
# limit is SPARSE_MAX_DENSITY_8_ROWS except on a Zen 5 or later on the AVX-512 path
# (``_wide_load_core``), for layers the packed dense kernel takes (PACK_MAX_FLOATS: larger ones would go
# to OpenBLAS, which repacks them on every call). On the Xeon, 8 rows at 25% kept: GPT-2's [50257, 256]
# output layer 2.65 ms sparse against 2.01 dense, [8192, 256] 0.41 against 0.34.
SPARSE_MAX_DENSITY_8_ROWS = 0.12
# The batched kernel transposes every input row into its panels before a weight touches it, and every
# output value out of its tiles: a W of few outputs does few multiply-adds per packed input value
# (outputs x density), and a W of few inputs has panels too short to pay for that work; the dense form
# on the packed kernel (_dense_right) then wins at any row count from 8. Measured against the packed
# kernel (`python -m benchmarks.narrow_matmul`: one layer, the two forms in turn, 1 / 2 threads), with
# panels packed as they are used (the product streams them where there are 4 a thread): ConvNeXt's
# [160, 40] at 3136 rows 0.26 / 0.10 ms sparse against 0.28 / 0.13 dense at 30% (48 per input), [40,
# 160] 0.19-0.22 / 0.08-0.10 against 0.27-0.29 / 0.13-0.14 at 20-30% (8-12 per input), [128, 64] 0.26-0.27
# / 0.11-0.12 against 0.30-0.34 / 0.15-0.17; MobileNet's [96, 32] at 12544 rows lost at 20-30%
# (0.52-0.60 / 0.30-0.31 against 0.49-0.50 / 0.26).
SPARSE_MIN_OUTPUT_WEIGHTS = 8
SPARSE_MIN_INPUTS = 40
FEW_ROWS_MAX_WEIGHTS = 1 << 18
# The packed dense kernel (_gemm.c gemm_packed) against OpenBLAS, one thread, each weight used once in
# turn as in a run (benchmarks/gemm.py, docs/gemm.md): the zoo's transformer and ConvNeXt layers (at
# most 4 MB) took 0.83-0.93 of OpenBLAS's time and 0.82-0.95 of onnxruntime's (MLAS, which packs at
# load too), 2 rows of 1024x1024 0.51 of OpenBLAS's; OpenBLAS repacks the weight on every call. Since
# it prefetches its panels ahead, it also wins on weights streamed from memory: a LLaMA-style 32000-word
# output layer (33 MB) at 64 rows 8.1 against 10.1 ms, GPT-2's (51 MB) at 128 rows 24.7 against 27.6,
# and in the model GPT-2 dense went 36.3 -> 31.0 ms at batch 1, 233 -> 223 at batch 8 (1 thread). The
# packed copy costs 4 bytes a weight: up to 64 MB weights have one.
PACK_MAX_FLOATS = 1 << 24
# One row (batch 1) goes to the packed kernel too on 2+ threads, split by panels, and on one thread for
# weights of up to this many values; past it OpenBLAS's matrix-vector kernel streams the weight faster
# (one row, minimum of 400 calls, numpy + the bias pass / packed, us, one thread: 128x512 8 / 3, 784x300
# 15 / 12, 256x1024 19 / 11, 512x1000 24 / 50, 1280x1000 110 / 201; two threads: 256x1024 25 / 8,
# 512x1000 40 / 16, 1280x1000 113 / 77, 1024x4096 340 / 300).
PACKED_ONE_ROW_MAX_WEIGHTS = 1 << 18
_POOLS: dict[int, ThreadPoolExecutor] = {}


def thread_pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="dcm")
    return _POOLS[threads]


def even_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """[begin, end) ranges that split 0..count into ``parts`` runs of about equal length."""
    cuts = np.linspace(0, count, parts + 1).astype(int)
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


class WeightMatmul:
    """A weight held in its runtime form; ``left(X)`` computes W @ X."""

    def __init__(self, mode: str, weight: CsrParts | np.ndarray, threads: int = 1, prefer: str = "left",
                 vectors: bool = False, by_rows: bool = False, tune: bool = False):
        """``prefer="right"``: the kernel calls ``right`` (fully connected layers), so a dense weight is
        stored transposed: x @ W.T on a contiguous W.T is about 12% faster in OpenBLAS (AlexNet fc6).
        ``vectors``: the layer mostly runs at batch 1, so the native kernel also keeps a CSC copy
        (6 bytes per stored weight) with which a matvec skips zero inputs.
        ``by_rows``: a sparse W multiplies an x of a row count where BLAS wins at its density
        (``prefers_dense``) with BLAS instead, on a dense copy made at the first such call and kept.
        ``tune`` (with ``by_rows``): which of the two multiplies a row count is decided by timing both
        on the first such call instead (``dcm.runtime.cpu.tune``); ``tuned`` records the choices."""
        self.mode = mode
        self.by_rows = by_rows and mode == "sparse"
        self.tune = tune and self.by_rows
        self.tuned: dict[int, str] = {}
        self._dense_wt: np.ndarray | None = None
        self._dense_packed: np.ndarray | None | bool = False  # False: not made yet (None: cannot be)
        self.threads = threads
        self.native = None  # the compiled sparse kernel's form of a sparse W
        self.packed: np.ndarray | None = None  # W.T in the compiled dense kernel's panels (_gemm.c)
        if mode == "sparse":
            m = weight.to_scipy() if isinstance(weight, CsrParts) else sp.csr_array(weight)
            m.sort_indices()
            self.shape = m.shape
            self.nnz = m.nnz
            self.size = m.shape[0] * m.shape[1]
            self.density = m.nnz / max(self.size, 1)
            self.blocks = [m]
            ok = native.SparseMatrix is not None and m.data.dtype == np.float32
            csc = _csc(m) if ok and vectors else None
            self.native = _native_matrix(m, csc) if ok else None  # splits its own batch-1 products
            self.vector_ok = self.native is None and _csr_matvec is not None and m.data.dtype == np.float32
            if threads > 1 and m.nnz >= PARALLEL_MIN_NNZ and self.native is None:  # scipy: a row block a thread
                cuts = _cuts(m.indptr, threads)
                self.blocks = [m[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
                self.vector_ok = False
        else:
            if prefer == "right":
                self.wt = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)
                self.w = self.wt.T
                self.packed = _packed(self.wt)
            else:
                self.w = np.ascontiguousarray(weight, dtype=np.float32)
                self.wt = self.w.T
            self.shape = self.w.shape
            self.nnz = int(np.count_nonzero(self.w))

    def left(self, x: np.ndarray) -> np.ndarray:
        """W [out, in] @ x [in, n] -> [out, n] float32."""
        if self.mode == "dense":
            if blas.runs_avx2_only() and x.dtype == np.float32 and x.ndim == 2 and self.w.dtype == np.float32:
                return self._packed_left(x)
            return blas.matmul(self.w, x, self.threads)
        if self.native is not None and x.dtype == np.float32:
            return self._native_left(x, None, False)
        if len(self.blocks) == 1:
            y = np.asarray(self.blocks[0] @ x, dtype=np.float32)
        else:
            parts = list(thread_pool(self.threads).map(lambda b: b @ x, self.blocks))
            y = np.asarray(np.concatenate(parts, axis=0), dtype=np.float32)
        if not math.isfinite(x.sum()):  # cheap test; an overflowing sum only costs the exact check
            self._poison(x, y)
        return y

    def _packed_left(self, x: np.ndarray) -> np.ndarray:
        """W @ x on the packed GEMM with x, not W, packed (once per call): W's rows are the GEMM's rows,
        x's columns its panels. Where OpenBLAS runs AVX2 kernels only (``blas.runs_avx2_only``): dense
        U-Net's three up-convolutions at batch 1, one thread, 682 / 762 / 663 -> 338 / 459 / 361 us
        (onnxruntime 307-401) on a Zen 5."""
        n = x.shape[1]
        y = np.empty((self.shape[0], n), np.float32)
        packed = np.frombuffer(native.pack_weight(x), np.float32)
        split = self.shape[0] * self.shape[1] * n >= blas.SPLIT_MIN_MACS
        native.gemm_packed(np.ascontiguousarray(self.w), packed, y, self.threads if split else 1)
        return y

    def _native_left(self, x: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
        """relu(W @ x [in, n] + bias [out, 1]) on the native kernel."""
        xt = np.ascontiguousarray(x)
        y = np.empty((self.shape[0], xt.shape[1]), dtype=np.float32)
        if self._batched(self.native.matmat, xt, y, bias, relu):
            self._poison(xt, y)
        return y

    def _native_rows(self, x: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
        """relu(x [n, in] @ W.T + bias [out]) -> [n, out] on the native kernel, which reads and writes
        the activations' own row layout (no transposed copy on either side)."""
        x = np.ascontiguousarray(x)
        y = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        if self._batched(self.native.matmat_rows, x, y, bias, relu):
            self._poison(x.T, y.T)
        return y

    def _batched(self, product, x: np.ndarray, y: np.ndarray, bias: np.ndarray | None, relu: bool) -> int:
        """One native batched product (matmat or matmat_rows), which splits itself over the native
        pool's threads. Returns the kernel's Inf/NaN count (a numpy sum here could warn on inf - inf,
        see Kernel.quiet)."""
        return product(x, y, bias, relu, threads=self.threads)

    def _poison(self, x: np.ndarray, y: np.ndarray) -> None:
        """Give y the NaNs a dense product would have: 0 * Inf and 0 * NaN are NaN.

        A sparse product skips pruned weights, so an Inf/NaN input would otherwise vanish from
        every output row that does not store a weight for it (silent zeroing, unlike onnxruntime).
        """
        bad = ~np.isfinite(x)  # [in, n]
        w = sp.vstack(self.blocks, format="csr") if len(self.blocks) > 1 else self.blocks[0]
        pattern = sp.csr_array((np.ones(w.nnz, np.float32), w.indices, w.indptr), shape=w.shape)
        hits = np.asarray(pattern @ bad.astype(np.float32))  # [out, n]: stored weights at bad inputs
        y[hits < bad.sum(axis=0, keepdims=True)] = np.nan

    @property
    def fuses_bias(self) -> bool:
        """Whether ``fused_right`` adds a bias and applies a ReLU as the product stores its output:
        the compiled sparse kernel, or the packed dense one."""
        return self.native is not None or self.packed is not None

    def right(self, x: np.ndarray) -> np.ndarray:
        """x [n, in] @ W.T -> [n, out], computed as (W @ x.T).T."""
        if self.packed is not None and x.dtype == np.float32 and x.shape[0] > 1:
            return self._packed_right(x, None, False)
        if self.mode == "dense":
            return blas.matmul(x, self.wt, self.threads)
        if self.native is not None and x.dtype == np.float32:
            return self.fused_right(x)
        if self.by_rows and self._dense_wins(x, lambda: self.left(x.T), lambda: x @ self.dense_wt()):
            return x @ self.dense_wt()
        if x.shape[0] == 1 and self.vector_ok and x.dtype == np.float32:
            return self._vector(x)
        return np.ascontiguousarray(self.left(x.T).T)

    def fused_right(self, x: np.ndarray, bias: np.ndarray | None = None, relu: bool = False,
                    act: tuple[str, float, float] | None = None) -> np.ndarray:
        """relu(x [n, in] @ W.T + bias [out]) -> [n, out] float32 on the native kernel (a sparse W with
        ``native`` set, float32 x; or a dense one with ``packed`` set). ``act``: a compiled activation
        (``Epilogue.act``) after the bias, in place of relu: the packed kernel applies the ones it knows
        (``pointconv.ACTS``: a transformer's GELU) in its store, the other paths in one compiled pass."""
        if self.packed is not None:
            if x.shape[0] > 1 or self.threads > 1 or self.w.size <= PACKED_ONE_ROW_MAX_WEIGHTS:
                return self._packed_right(x, bias, relu, act=act)
            return self._dense_right(x, bias, relu, act)
        if x.shape[0] == 1:
            return _activated(self._fused_vector(x, bias, relu), act, self.threads)
        if self.by_rows and self._dense_wins(x, lambda: self._native_rows(x, bias, relu),
                                             lambda: self._dense_right(x, bias, relu)):
            return self._dense_right(x, bias, relu, act)
        return _activated(self._native_rows(x, bias, relu), act, self.threads)

    def packed_call(self, rows: int, relu: bool, act: tuple[str, float, float] | None) -> tuple | None:
        """(threads, the activation in the store) of the one ``gemm_packed`` call that ``fused_right``
        comes to for float32 x of ``rows`` rows and this relu and act; None where it does more (another
        kernel, an activation pass after the product). A layer keeps it per input shape (linear.py)."""
        if self.packed is None or not (rows > 1 or self.threads > 1 or self.w.size <= PACKED_ONE_ROW_MAX_WEIGHTS):
            return None
        in_store = act if act is not None and not relu and act[0] in pointconv.ACTS else None
        if act is not None and in_store is None:
            return None
        split = rows * self.shape[1] * self.shape[0] >= blas.SPLIT_MIN_MACS  # as _packed_right splits
        return (self.threads if split else 1, in_store)

    def _packed_right(self, x: np.ndarray, bias: np.ndarray | None, relu: bool,
                      packed: np.ndarray | None = None, act: tuple[str, float, float] | None = None) -> np.ndarray:
        """act(relu(x [n, in] @ W.T + bias [out])) on the packed dense kernel (this dense layer's panels,
        or ``packed``), split over the threads when the product is as large as blas.matmul splits."""
        x = np.ascontiguousarray(x)
        y = np.empty((x.shape[0], self.shape[0]), np.float32)
        split = x.shape[0] * x.shape[1] * y.shape[1] >= blas.SPLIT_MIN_MACS
        in_store = act if act is not None and not relu and act[0] in pointconv.ACTS else None
        native.gemm_packed(x, self.packed if packed is None else packed, y, self.threads if split else 1, bias, relu,
                           act=in_store)
        return y if in_store is not None else _activated(y, act, self.threads)

    def _dense_right(self, x: np.ndarray, bias: np.ndarray | None, relu: bool,
                     act: tuple[str, float, float] | None = None) -> np.ndarray:
        """act(relu(x @ W.T + bias)) on the dense form: a sparse layer whose row count goes to dense runs
        the packed kernel on a packed copy where this CPU has it (ConvNeXt's [80, 320] at 784 rows, 30%
        kept, 1 / 2 threads: 0.30 / 0.18 ms through BLAS and its bias pass, 0.27 / 0.13 packed)."""
        if self.mode == "sparse" and x.shape[0] > 1 and x.dtype == np.float32:
            if self._dense_packed is False:
                self._dense_packed = _packed(self.dense_wt())
                if self._dense_packed is not None:
                    self._dense_wt = None  # the packed copy replaces it (BLAS takes it again for other types)
            if self._dense_packed is not None:
                return self._packed_right(x, bias, relu, self._dense_packed, act)
        y = blas.matmul(x, self.dense_wt(), self.threads)
        if act is not None and not relu:  # bias and activation in one compiled pass
            native.activate(y, y, *act, bias=bias, threads=self.threads)
            return y
        if (bias is not None or relu) and not add_and_activate(y, bias, relu, None):
            if bias is not None:
                y += bias
            if relu:
                np.maximum(y, 0, out=y)
        return _activated(y, act, self.threads)

    def _dense_wins(self, x: np.ndarray, sparse: Callable[[], np.ndarray], dense: Callable[[], np.ndarray]) -> bool:
        """Whether this x [rows, in] goes to BLAS on the dense copy: by the measured break-even points
        (``prefers_dense``), or with ``tune`` by timing both products on this x, once per layer shape,
        density, row count and thread count in the process."""
        rows = x.shape[0]
        if not self.tune or rows <= 1:
            return prefers_dense(self.density, rows, self.size, self.shape[1], self.shape[0])
        key = ("matmul", self.shape, self.nnz, rows, self.threads)
        had_copy = self.holds_dense_form
        self.tuned[rows] = tune.choose(key, {"sparse": sparse, "dense": dense})
        if self.tuned[rows] == "sparse" and not had_copy:  # made for the race only
            self._dense_wt, self._dense_packed = None, False
        return self.tuned[rows] == "dense"

    @property
    def holds_dense_form(self) -> bool:
        """Whether a sparse layer holds a dense copy of its weight (plain or packed), made at its first
        call that went to the dense form."""
        return self._dense_wt is not None or self._dense_packed is not False

    def dense_wt(self) -> np.ndarray:
        """W.T as a contiguous dense array, made once: the form BLAS takes for many rows. It costs 4
        bytes per weight besides the sparse form, held only by layers that see such calls. A dense W's
        own ``wt``."""
        if self.mode == "dense":
            return self.wt
        if self._dense_wt is None:
            w = self.blocks[0] if len(self.blocks) == 1 else sp.vstack(self.blocks, format="csr")
            self._dense_wt = np.ascontiguousarray(w.toarray().T, dtype=np.float32)
        return self._dense_wt

    def _fused_vector(self, x: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
        """Batch 1: one compiled matvec (CSR, or CSC skipping zero inputs), which splits itself over the
        native pool from 32k stored weights. (Split through a Python thread pool, only layers of 200k
        weights or more had used the threads: ResNet-18's and RegNetX's classifiers ran on one.)"""
        y = np.empty((1, self.shape[0]), dtype=np.float32)
        try:
            bad = self.native.matvec(x, y, bias, relu, threads=self.threads)  # any shape with the right count
        except ValueError:  # not contiguous (or a real error, which the retry raises again)
            bad = self.native.matvec(np.ascontiguousarray(x), y, bias, relu, threads=self.threads)
        if bad:
            self._poison(x.reshape(-1, 1), y.T)
        return y

    def _vector(self, x: np.ndarray) -> np.ndarray:
        """Batch 1: one CSR matvec straight into the output. ``A @ x`` costs 2-3 us more per call
        in checks and copies, as much as the whole product for LeNet-300's fc2 and fc3."""
        m = self.blocks[0]
        v = x.reshape(-1)
        y = np.zeros((1, self.shape[0]), dtype=np.float32)
        _csr_matvec(self.shape[0], self.shape[1], m.indptr, m.indices, m.data, v, y.reshape(-1))
        if not math.isfinite(np.add.reduce(v)):
            self._poison(v[:, None], y.T)
        return y


def prefers_dense(density: float, rows: int, weights: int = 0, inputs: int = 0, outputs: int = 0) -> bool:
    """Whether the dense form beats the compiled sparse kernel on an x of ``rows`` rows at this
    density, for a layer of ``weights`` weights, ``inputs`` inputs and ``outputs`` outputs (0: not
    known), on any thread count (the measured break-even points held at 1 and 2). One row keeps the
    load-time choice: the matvec kernels there also skip zero inputs."""
    if rows <= 1:
        return False
    if rows < 8:
        return weights <= FEW_ROWS_MAX_WEIGHTS and density > SPARSE_MAX_DENSITY_FEW_ROWS
    if (outputs and outputs * density < SPARSE_MIN_OUTPUT_WEIGHTS) or 0 < inputs < SPARSE_MIN_INPUTS:
        return True
    avx512 = native.batched_simd is not None and native.batched_simd() == "avx512"
    if rows < 16 and weights <= PACK_MAX_FLOATS and not (avx512 and _wide_load_core()):
        return density > SPARSE_MAX_DENSITY_8_ROWS
    if inputs <= WIDE_INPUTS:
        return density > SPARSE_MAX_DENSITY_MANY_ROWS
    return density > (SPARSE_MAX_DENSITY_WIDE_AVX512 if avx512 else SPARSE_MAX_DENSITY_WIDE)


def zen5_or_later(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text names an AMD CPU of family 26 (Zen 5) or later, whose cores issue
    four loads a cycle: there the batched sparse kernel keeps its lead from 8 rows."""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, re.M)
    return bool(vendor and family and vendor.group(1) == "AuthenticAMD" and int(family.group(1)) >= 26)


@functools.cache
def _wide_load_core() -> bool:
    """zen5_or_later for this machine (False where /proc/cpuinfo cannot be read: the rule for other CPUs)."""
    try:
        return zen5_or_later(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False


def _activated(y: np.ndarray, act: tuple[str, float, float] | None, threads: int) -> np.ndarray:
    """y with the compiled activation ``act`` applied in place (None: y as it is)."""
    if act is not None:
        native.activate(y, y, *act, threads=threads)
    return y


def _packed(wt: np.ndarray) -> np.ndarray | None:
    """W.T [in, out] packed for the compiled dense kernel, where this CPU runs its AVX-512 tiles and the
    weight is at most PACK_MAX_FLOATS: 4 bytes per weight besides ``wt``, used from 2 rows of x. Its AVX2
    tiles lost to OpenBLAS on the linear layers: whole runs at batch 1 on one thread of a Zen 3, against
    the same build's OpenBLAS products, BERT 1.06-1.10x the time, ViT-Tiny 1.07x, GPT-2 1.19-1.20x."""
    if (native.gemm_packed is None or native.packed_simd() != "avx512" or wt.dtype != np.float32
            or wt.size > PACK_MAX_FLOATS):
        return None
    return packed_weight(wt)


def packed_weight(wt: np.ndarray) -> np.ndarray:
    """W.T [in, out] in the packed GEMM's panels (native.pack_weight), starting on a cache line
    (memory.aligned)."""
    return memory.aligned(np.frombuffer(native.pack_weight(wt), np.float32))


def _cuts(indptr: np.ndarray, parts: int) -> list[int]:
    """Boundaries that split the rows (or columns) of indptr into ``parts`` runs of about equal nnz."""
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], parts + 1)[1:-1])
    major = len(indptr) - 1
    return [0, *sorted(set(int(b) for b in bounds) - {0, major}), major]


def _csc(m: sp.csr_array) -> sp.csc_array:
    c = sp.csc_array(m)
    c.sort_indices()
    return c


def _native_matrix(m: sp.csr_array, c: sp.csc_array | None):
    """The native kernel's form of a CSR weight and, given one, of a CSC copy: 16-bit indices where they
    fit (6 bytes per weight, against 8), else scipy's own arrays. The batched products stream the CSR
    form once per panel: 16-bit column indices took 0.94-0.97 of the time on ViT's and BERT's layers at
    25-30% kept (both forms in one process, calls in turn)."""
    def narrow(indices: np.ndarray, extent: int) -> np.ndarray:
        return indices.astype(np.uint16 if extent <= np.iinfo(np.uint16).max + 1 else np.int32, copy=False)

    csr = (m.indptr.astype(np.int64), narrow(m.indices, m.shape[1]), m.data)
    if c is None:
        return native.SparseMatrix(m.shape[0], m.shape[1], *csr)
    return native.SparseMatrix(m.shape[0], m.shape[1], *csr, c.indptr.astype(np.int64), narrow(c.indices, m.shape[0]),
                               c.data)
