"""Encode one tensor into a spec.md payload and back: the Deep Compression coding pipeline.

    weights --mask--> kept values (row-major) --k-means--> codes --Huffman--> code stream
            --positions--> relative index (+ fillers) --Huffman--> index stream
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from dcm.errors import EncodeError, FormatError
from dcm.format import constants as C
from dcm.format.blobs import CodedPayload, csr_bytes, decoded_size_limit, pack_payload, parse_payload
from dcm.format.model import TensorRecord
from dcm.encoder import huffman, relindex
from dcm.encoder.kmeans import Init, assign, kmeans_1d

IndexBits = int | Literal["auto"]
AUTO_INDEX_RANGE = range(2, 9)


@dataclass
class CsrParts:
    """A decoded sparse weight as a kernel wants it: the 2-D [rows, cols] CSR arrays.

    ``values = codebook[codes]`` for codebook encodings; ``codes`` is None for float32 values.
    """

    shape2d: tuple[int, int]
    values: np.ndarray  # float32 [nnz]
    codes: np.ndarray | None  # int [nnz]
    codebook: np.ndarray | None  # float32 [K]
    indices: np.ndarray  # int32/int64 [nnz], column of each entry
    indptr: np.ndarray  # int32/int64 [rows + 1]

    def to_scipy(self) -> sp.csr_array:
        return sp.csr_array((self.values, self.indices, self.indptr), shape=self.shape2d)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """2-D view used for CSR: [first dim, product of the rest] ([out, in*kh*kw] for conv)."""
    if len(shape) == 0:
        return (1, 1)
    rows = shape[0]
    return rows, (int(np.prod(shape[1:])) if len(shape) > 1 else 1)


def _check_bits(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or not C.MIN_BITS <= value <= C.MAX_BITS:
        raise EncodeError(f"{name} must be an integer in {C.MIN_BITS}..{C.MAX_BITS}, got {value!r}")


def best_index_bits(positions: np.ndarray, candidates: range = AUTO_INDEX_RANGE,
                    compact_tables: bool = True) -> int:
    """The index width that minimizes coded index bits + table bytes (fillers vs. symbol size)."""
    best, best_cost = candidates[0], None
    for b in candidates:
        bits, table = huffman.coded_bits(relindex.encode_positions(positions, b), 1 << b)
        cost = bits + 8 * len(table.to_compact_bytes(1 << b) if compact_tables else table.to_bytes())
        if best_cost is None or cost < best_cost:
            best, best_cost = b, cost
    return best


def encode_raw(array: np.ndarray, name: str = "") -> TensorRecord:
    """Store a tensor verbatim (biases, BN parameters, shapes): spec 5.1."""
    a = np.asarray(array)
    dtype = next((k for k, v in C.DTYPES.items() if v == a.dtype.newbyteorder("<")), None)
    if dtype is None:
        raise EncodeError(f"tensor {name!r}: dtype {a.dtype} has no raw encoding")
    return TensorRecord(name, dtype, tuple(int(d) for d in a.shape), C.ENC_RAW,
                        np.ascontiguousarray(a, dtype=C.DTYPES[dtype]).tobytes())


def encode_tensor(weights: np.ndarray, mask: np.ndarray | None = None, code_bits: int = 8,
                  index_bits: IndexBits = 5, init: Init = "linear", codebook: np.ndarray | None = None,
                  quantize: bool = True, name: str = "", block_log2: int = C.DEFAULT_BLOCK_LOG2,
                  compact_tables: bool = True) -> TensorRecord:
    """Encode a float tensor as ``sparse-codebook-huffman`` (some positions pruned),
    ``dense-codebook-huffman`` (none pruned) or, with ``quantize=False``, ``sparse-float32-huffman``,
    each with the ``-compact`` suffix (spec 5.5) unless ``compact_tables=False`` asks for the
    version 1.0 tables that listed every symbol.

    ``mask`` marks kept positions (default: the non-zero weights). ``codebook`` reuses centroids
    from trained quantization instead of running k-means, so no second quantization happens.
    """
    w = np.asarray(weights, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise EncodeError(f"tensor {name!r} contains NaN or Inf; refusing to encode it")
    if w.size > C.MAX_ELEMENTS or w.ndim > C.MAX_RANK:
        raise EncodeError(f"tensor {name!r}: shape {w.shape} exceeds the format's limits")
    mask = (w != 0) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != w.shape:
        raise EncodeError(f"tensor {name!r}: mask shape {mask.shape} differs from weights {w.shape}")
    flat = w.ravel()
    positions = np.flatnonzero(mask.ravel())
    kept = flat[positions]
    sparse = len(positions) < w.size or not quantize
    if not quantize:
        encoding, cb, codes_sym = C.ENC_SPARSE_FLOAT, None, None
        code_bits = 0
    else:
        _check_bits("code_bits", code_bits)
        encoding = C.ENC_SPARSE if sparse else C.ENC_DENSE
        if codebook is not None:
            cb = np.unique(np.asarray(codebook, dtype=np.float32))
            if not np.all(np.isfinite(cb)) or len(cb) > 1 << code_bits:
                raise EncodeError(f"tensor {name!r}: codebook must be finite with at most 2^{code_bits} entries")
            codes_sym = assign(kept, cb) if len(cb) else np.zeros(0, np.int64)
        else:
            cb, codes_sym = kmeans_1d(kept, 1 << code_bits, init=init)
        if len(kept) and not len(cb):
            raise EncodeError(f"tensor {name!r}: empty codebook for {len(kept)} kept weights")
        if not len(cb):
            cb = np.zeros(1, np.float32)  # spec 5.2: K >= 1 even when nothing is stored
    if compact_tables:
        encoding = C.WITH_COMPACT_TABLES[encoding]
    if sparse:
        if index_bits == "auto":
            index_bits = best_index_bits(positions, compact_tables=compact_tables)
        _check_bits("index_bits", index_bits)
        idx_sym = relindex.encode_positions(positions, index_bits)
        index = huffman.encode_stream(idx_sym, huffman.build_table(idx_sym, 1 << index_bits), block_log2)
    else:
        index_bits, idx_sym, index = 0, np.zeros(0), None
    codes = None
    if quantize:
        codes = huffman.encode_stream(codes_sym, huffman.build_table(codes_sym, len(cb)), block_log2)
    payload = CodedPayload(encoding, code_bits, index_bits, block_log2, len(positions), len(idx_sym),
                           cb if quantize else None, None if quantize else kept, codes, index)
    return TensorRecord(name, "float32", tuple(int(d) for d in w.shape), encoding, pack_payload(payload))


def parse(record: TensorRecord) -> CodedPayload:
    return parse_payload(record.payload, record.encoding, record.numel, 0, record.name)


def check_decoded_size(record: TensorRecord, nbytes: int, form: str) -> None:
    """Spec 8: refuse to build a decoded form out of proportion to the payload, before allocating it.

    Sparse encodings leave trailing zeros implicit, so a tiny payload may claim a huge shape;
    without this bound a 1 KB file could make the CSR row pointers (or a dense copy) take gigabytes.
    """
    limit = decoded_size_limit(len(record.payload))
    if nbytes > limit:
        raise FormatError(f"tensor {record.name!r}: its {form} form would take {nbytes:,} bytes, more than "
                          f"{limit:,} allowed for a {len(record.payload):,}-byte payload"
                          + (" (use the sparse kernel for this layer)" if form == "dense" else ""), rule="8")


def decode_parts(record: TensorRecord) -> CsrParts:
    """Decode a coded tensor straight into CSR arrays of its 2-D view; never builds the dense array."""
    p = parse(record)
    rows, cols = matrix_shape(record.shape)
    check_decoded_size(record, csr_bytes(record.shape, p.nnz), "CSR")
    itype = np.int32 if record.numel < 2**31 else np.int64
    codes = None
    if p.codes is not None:
        codes = huffman.decode_stream(p.codes, p.nnz, p.block_log2, f"tensor {record.name!r} code stream")
        values = p.codebook[codes]
    else:
        values = np.array(p.values, dtype=np.float32)
    if p.index is not None:
        sym = huffman.decode_stream(p.index, p.index_count, p.block_log2, f"tensor {record.name!r} index stream")
        try:
            pos = relindex.decode_positions(sym, p.index_bits, record.numel, p.nnz)
        except FormatError as exc:
            raise FormatError(f"tensor {record.name!r}: {exc.message}", exc.offset, exc.rule or "5.2") from None
    else:
        pos = np.arange(record.numel, dtype=np.int64)
    r, c = np.divmod(pos, max(cols, 1))
    indptr = np.zeros(rows + 1, dtype=itype)
    np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
    return CsrParts((rows, cols), values, codes, p.codebook, c.astype(itype), indptr)


def decode_tensor(record: TensorRecord, form: Literal["dense", "csr", "parts"] = "dense"):
    """Decode a tensor record: ``dense`` ndarray of its shape, ``csr`` (scipy, 2-D view) or ``parts``.

    Exact: values equal ``codebook[code]`` at exactly the kept positions and 0 elsewhere.
    """
    if record.encoding == C.ENC_RAW:
        a = np.frombuffer(record.payload, dtype=C.DTYPES[record.dtype]).reshape(record.shape)
        if form != "dense":
            raise EncodeError(f"tensor {record.name!r} is raw; only form='dense' applies")
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    if form == "dense":
        check_decoded_size(record, 4 * record.numel, "dense")
    parts = decode_parts(record)
    if form == "parts":
        return parts
    if form == "csr":
        return parts.to_scipy()
    out = np.zeros(record.numel, dtype=np.float32)
    rows, cols = parts.shape2d
    flat = np.repeat(np.arange(rows, dtype=np.int64), np.diff(parts.indptr)) * cols + parts.indices
    out[flat] = parts.values
    return out.reshape(record.shape)
