"""Codec throughput and coding efficiency.

    python benchmarks/codecs.py

Layers: a synthetic 4096x9216 layer at 9% density (AlexNet fc6 shape, 5-bit codes, 5-bit index) and,
when `benchmarks/compression.py` has written them, the real trained LeNet layers from
benchmarks/results/*.dcm (re-encoded with the settings stored in the file).
Reports encode time and throughput, decode throughput next to bitarray's plain canonical decode of
the same streams in the same run, and coded bits vs zero-order entropy. Writes
benchmarks/results/codecs.json.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode

from benchmarks.common import RESULTS, save
from dcm.encoder import decode_parts, decode_tensor, encode_tensor, mask_by_sparsity
from dcm.encoder import huffman
from dcm.encoder.codec import parse
from dcm.format import constants as C
from dcm.format import read


REPEATS = 7


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * len(symbols))


def plain_decode_seconds(stream, count: int, via: str) -> float:
    """bitarray alone on the same symbols as one unblocked stream: bytes -> bitarray -> canonical_decode
    -> numpy, materialized ``via`` "fromiter" (the usual way) or "bytearray" (dcm's way)."""
    a = bitarray(endian="big")
    pos = 0
    data = bytes(stream.data)
    for nbits in stream.block_bits.tolist():
        b = bitarray(endian="big")
        nbytes = (nbits + 7) // 8
        b.frombytes(data[pos : pos + nbytes])
        a += b[:nbits]
        pos += nbytes
    nbits, raw = len(a), a.tobytes()
    counts, symbols = [0] + list(stream.table.counts), stream.table.symbols.tolist()
    t = time.perf_counter()
    plain = bitarray(endian="big")
    plain.frombytes(raw)
    del plain[nbits:]
    it = canonical_decode(plain, counts, symbols)
    if via == "bytearray" and max(symbols, default=0) < 256:
        out = np.frombuffer(bytearray(it), np.uint8)
    else:
        out = np.fromiter(it, np.int64, count)
    elapsed = time.perf_counter() - t
    assert len(out) == count
    return elapsed


def measure(name: str, w: np.ndarray, mask: np.ndarray, code_bits: int, index_bits) -> dict:
    t = time.perf_counter()
    rec = encode_tensor(w, mask, code_bits=code_bits, index_bits=index_bits, name=name)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    parts = decode_parts(rec)
    t_dec = time.perf_counter() - t
    assert np.array_equal(decode_tensor(rec)[mask], parts.codebook[parts.codes])
    p = parse(rec)
    from dcm.encoder.relindex import encode_positions

    idx_sym = encode_positions(np.flatnonzero(mask.ravel()), p.index_bits)
    row = {"layer": name, "shape": list(w.shape), "weights": int(w.size), "nnz": int(p.nnz),
           "code_bits": p.code_bits, "index_bits": p.index_bits, "encode_s": t_enc,
           "encode_Mweights_s": w.size / t_enc / 1e6, "decode_s": t_dec,
           "decode_Msymbols_s": (p.nnz + p.index_count) / t_dec / 1e6}
    def ours() -> float:
        t = time.perf_counter()
        huffman.decode_stream(p.codes, p.nnz, p.block_log2)
        huffman.decode_stream(p.index, p.index_count, p.block_log2)
        return time.perf_counter() - t

    def plain(via: str) -> float:
        return plain_decode_seconds(p.codes, p.nnz, via) + plain_decode_seconds(p.index, p.index_count, via)

    # best of REPEATS, interleaved, so that a noisy neighbour hits every variant alike
    t_huff = t_plain = t_same = float("inf")
    for _ in range(REPEATS):
        t_huff = min(t_huff, ours())
        t_plain = min(t_plain, plain("fromiter"))
        t_same = min(t_same, plain("bytearray"))
    row["bitarray_plain_Msymbols_s"] = (p.nnz + p.index_count) / t_plain / 1e6
    row["huffman_vs_plain"] = t_huff / t_plain  # our block decoder (checks included) vs bitarray + fromiter
    row["huffman_vs_plain_bytearray"] = t_huff / t_same  # vs bitarray materialized our way: the cost of blocks
    row["decode_vs_plain"] = t_dec / t_plain  # + positions, CSR arrays and codebook lookup
    for key, stream, sym in (("code", p.codes, parts.codes), ("index", p.index, idx_sym)):
        bits = int(stream.block_bits.astype(np.int64).sum())
        h = entropy_bits(np.asarray(sym, dtype=np.int64))
        row[f"{key}_bits"] = bits
        row[f"{key}_entropy_bits"] = h
        row[f"{key}_bits_vs_entropy"] = bits / h if h else float("nan")
        row[f"{key}_table_bytes"] = len(p.tables()[0 if key == "code" else -1]) + 4 * len(stream.block_bits)
    return row


def layers():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 9216)).astype(np.float32)
    yield "synthetic fc6 4096x9216", w, mask_by_sparsity(w, 0.91), 5, 5
    for path in sorted(Path(RESULTS).glob("lenet*.dcm")):
        model = read(path)
        for t in model.tensors.values():
            if t.encoding in (C.ENC_SPARSE, C.ENC_SPARSE_COMPACT):
                p = parse(t)
                dense = decode_tensor(t)
                yield f"{path.stem}/{t.name}", dense, dense != 0, p.code_bits, p.index_bits


def main() -> None:
    rows = [measure(*args) for args in layers()]
    print(f"{'layer':<26}{'nnz':>9}{'enc s':>7}{'enc Mw/s':>9}{'dec Ms/s':>9}{'plain Ms/s':>11}{'huff/plain':>11}"
          f"{'huff/same':>10}{'dec/plain':>10}{'code/H':>8}{'idx/H':>8}{'tables B':>9}")
    for r in rows:
        print(f"{r['layer'][:25]:<26}{r['nnz']:>9}{r['encode_s']:>7.2f}{r['encode_Mweights_s']:>9.1f}"
              f"{r['decode_Msymbols_s']:>9.1f}{r['bitarray_plain_Msymbols_s']:>11.1f}{r['huffman_vs_plain']:>11.2f}"
              f"{r['huffman_vs_plain_bytearray']:>10.2f}{r['decode_vs_plain']:>10.2f}"
              f"{r['code_bits_vs_entropy']:>8.3f}{r['index_bits_vs_entropy']:>8.3f}"
              f"{r['code_table_bytes'] + r['index_table_bytes']:>9}")
    print(f"wrote {save('codecs', {'rows': rows})}")


if __name__ == "__main__":
    main()
