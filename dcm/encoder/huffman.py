"""Canonical Huffman coding of symbol streams (spec.md section 6), on top of bitarray.

Tables are length-limited to ``MAX_CODE_LENGTH``: when bitarray's optimal code is longer, the
frequencies are halved (never below 1) and the code rebuilt, which costs a fraction of a percent
on the skewed distributions that need it and keeps every decoder's lookup bounded.
"""
from __future__ import annotations

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman

from dcm.errors import FormatError
from dcm.format.blobs import HuffmanTable, Stream, n_blocks
from dcm.format.constants import MAX_CODE_LENGTH


def code_lengths(freq: np.ndarray) -> np.ndarray:
    """Length-limited Huffman code length of every symbol (0 for symbols that never occur)."""
    freq = np.asarray(freq, dtype=np.int64)
    lengths = np.zeros(len(freq), dtype=np.int64)
    used = np.flatnonzero(freq)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    f = freq[used]
    while True:
        code, _, _ = canonical_huffman({int(s): int(c) for s, c in zip(used, f)})
        got = np.array([len(code[int(s)]) for s in used])
        if got.max() <= MAX_CODE_LENGTH:
            lengths[used] = got
            return lengths
        f = np.maximum(f >> 1, 1)


table_from_lengths = HuffmanTable.from_lengths


def canonical_codes(table: HuffmanTable) -> dict[int, frozenbitarray]:
    """Symbol -> code bits, assigned exactly as spec 6 (and bitarray's canonical_decode) define."""
    codes, code, i = {}, 0, 0
    for length, count in enumerate(table.counts, start=1):
        for _ in range(count):
            bits = bitarray(format(code, f"0{length}b"), endian="big") if length else bitarray()
            codes[int(table.symbols[i])] = frozenbitarray(bits)
            code += 1
            i += 1
        code <<= 1
    return codes


def build_table(symbols: np.ndarray, alphabet: int) -> HuffmanTable:
    return table_from_lengths(code_lengths(np.bincount(symbols, minlength=alphabet)))


def coded_bits(symbols: np.ndarray, alphabet: int) -> tuple[int, HuffmanTable]:
    """Exact size of the stream that ``encode_stream`` would write (without block padding)."""
    freq = np.bincount(symbols, minlength=alphabet)
    lengths = code_lengths(freq)
    return int((freq * lengths).sum()), table_from_lengths(lengths)


def encode_stream(symbols: np.ndarray, table: HuffmanTable, block_log2: int) -> Stream:
    """Huffman-code ``symbols`` in independent byte-aligned blocks of 2^block_log2 symbols."""
    codes = canonical_codes(table)
    size = 1 << block_log2
    bits, chunks = [], []
    for start in range(0, len(symbols), size):
        a = bitarray(endian="big")
        a.encode(codes, symbols[start : start + size].tolist())
        bits.append(len(a))
        chunks.append(a.tobytes())
    return Stream(table, np.array(bits, dtype=np.uint32), b"".join(chunks))


def decode_stream(stream: Stream, count: int, block_log2: int, what: str = "stream") -> np.ndarray:
    """Decode ``count`` symbols (uint8 when the table's symbols fit a byte, else int64).

    Byte-sized symbols go from bitarray's iterator into a bytearray per block (filled in C; about
    1.3x faster than ``np.fromiter``), joined once at the end.
    Every error (bad code, wrong count, non-zero padding) is a FormatError.
    """
    if n_blocks(count, block_log2) != len(stream.block_bits):
        raise FormatError(f"{what}: wrong number of blocks", rule="5.2")
    table = stream.table
    symbols = table.symbols.tolist()
    small = max(symbols, default=0) < 256
    counts = [0, *table.counts]
    data = memoryview(stream.data)
    size, pos = 1 << block_log2, 0
    chunks: list[bytearray] = []
    out = np.empty(0 if small else count, dtype=np.int64)
    for b, nbits in enumerate(stream.block_bits.tolist()):
        lo = b * size
        n = min(size, count - lo)
        nbytes = (nbits + 7) // 8
        if nbits % 8 and data[pos + nbytes - 1] & (0xFF >> (nbits % 8)):
            raise FormatError(f"{what} block {b}: padding bits are not zero", rule="5.2")
        a = bitarray(endian="big")
        a.frombytes(data[pos : pos + nbytes])
        pos += nbytes
        del a[nbits:]
        it = canonical_decode(a, counts, symbols)
        try:
            if small:
                chunks.append(bytearray(it))
                got = len(chunks[-1])
            else:
                out[lo : lo + n] = np.fromiter(it, dtype=np.int64, count=n)
                got = n + sum(1 for _ in it)
        except ValueError as exc:  # a bad code, an incomplete last code, or fewer than n symbols
            raise FormatError(f"{what} block {b}: invalid Huffman data or too few symbols ({exc})", rule="6") from None
        if got != n:
            raise FormatError(f"{what} block {b}: holds {'more' if got > n else 'fewer'} than its {n} symbols",
                              rule="6")
    if not small:
        return out
    return np.frombuffer(chunks[0] if len(chunks) == 1 else bytearray().join(chunks), dtype=np.uint8)
