"""Byte layout of one coded tensor payload (spec.md sections 5.2-5.5 and 6), both directions.

Parsing checks every count and length against the limits and the bytes actually present before
it allocates, so a hostile payload can cost at most a small multiple of its own size. Turning the
Huffman streams into symbols is left to ``dcm.encoder.huffman``; here they stay byte slices.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode

from dcm.errors import FormatError
from dcm.format import constants as C

BLOB_HEADER = struct.Struct("<BBBBIQQQ")  # code_bits, index_bits, block_log2, 0, K, nnz, index_count, 0
assert BLOB_HEADER.size == 32


# spec 6.2: the prefix code of a compact table's length operations. Symbol 0 ("0") repeats the
# previous symbol's length, 1 ("10") adds one, 2 ("110") subtracts one, and 3 + v ("111" then v
# in 5 bits) sets the length to v. As canonical (count, symbols) it is: one code each of
# lengths 1, 2 and 3, and 25 of length 8, which ``canonical_decode`` reads in C.
LENGTH_OP_COUNTS = [0, 1, 1, 1, 0, 0, 0, 0, C.MAX_CODE_LENGTH + 1]
LENGTH_OP_BITS = np.array([1, 2, 3] + [8] * (C.MAX_CODE_LENGTH + 1), dtype=np.int64)
_SAME, _UP, _DOWN, _SET = 0, 1, 2, 3


def _length_op_codes() -> dict[int, bitarray]:
    codes = {_SAME: bitarray("0"), _UP: bitarray("10"), _DOWN: bitarray("110")}
    codes.update({_SET + v: bitarray("111" + format(v, "05b")) for v in range(C.MAX_CODE_LENGTH + 1)})
    return codes


LENGTH_OP_CODES = _length_op_codes()


@dataclass
class HuffmanTable:
    """Canonical Huffman code: ``counts[i]`` codes of length i+1, ``symbols`` in canonical order."""

    counts: list[int]
    symbols: np.ndarray  # uint16 [n]

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> HuffmanTable:
        """Canonical order: by code length, then by symbol value (spec 6)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        used = np.flatnonzero(lengths)
        if not len(used):
            return cls([], np.zeros(0, dtype=np.uint16))
        order = used[np.lexsort((used, lengths[used]))]
        counts = np.bincount(lengths[used], minlength=int(lengths.max()) + 1)[1:]
        return cls([int(c) for c in counts], order.astype(np.uint16))

    def lengths(self, alphabet: int) -> np.ndarray:
        """Code length of every symbol 0..alphabet-1 (0 for symbols without a code)."""
        out = np.zeros(alphabet, dtype=np.int64)
        out[self.symbols.astype(np.int64)] = np.repeat(np.arange(1, len(self.counts) + 1), self.counts)
        return out

    def to_bytes(self) -> bytes:
        """The listed form of spec 6.1: L, count[1..L] as u32, the symbols as u16."""
        head = struct.pack("<B", len(self.counts)) + struct.pack(f"<{len(self.counts)}I", *self.counts)
        return head + np.asarray(self.symbols, dtype="<u2").tobytes()

    def to_compact_bytes(self, alphabet: int) -> bytes:
        """The compact form of spec 6.2: L, then every symbol's length as a change from the
        previous symbol's, in a fixed prefix code (always the shortest operation)."""
        if not self.counts:
            return b"\0"
        lengths = self.lengths(alphabet)
        step = np.diff(lengths, prepend=0)
        ops = np.where(step == 0, _SAME, np.where(step == 1, _UP, np.where(step == -1, _DOWN, _SET + lengths)))
        bits = bitarray(endian="big")
        bits.encode(LENGTH_OP_CODES, ops.tolist())
        return struct.pack("<B", len(self.counts)) + bits.tobytes()

    @property
    def max_length(self) -> int:
        return len(self.counts)


@dataclass
class Stream:
    """A Huffman-coded symbol stream split into byte-aligned blocks of ``block_size`` symbols."""

    table: HuffmanTable
    block_bits: np.ndarray  # uint32 [n_blocks], exact bit length of each block
    data: bytes | memoryview  # the blocks, each padded with zero bits to a whole byte


@dataclass
class CodedPayload:
    """A parsed ``*-huffman`` payload. Fields that an encoding does not use are None / 0."""

    encoding: str
    code_bits: int
    index_bits: int
    block_log2: int
    nnz: int
    index_count: int
    codebook: np.ndarray | None  # float32 [K]
    values: np.ndarray | None  # float32 [nnz], sparse-float32-huffman only
    codes: Stream | None
    index: Stream | None

    @property
    def block_size(self) -> int:
        return 1 << self.block_log2

    def tables(self) -> list[bytes]:
        """The serialized Huffman tables, code table first, in the form the encoding uses."""
        out = []
        for stream, alphabet in ((self.codes, 0 if self.codebook is None else len(self.codebook)),
                                 (self.index, 1 << self.index_bits)):
            if stream is not None:
                compact = self.encoding in C.COMPACT_TABLE_ENCODINGS
                out.append(stream.table.to_compact_bytes(alphabet) if compact else stream.table.to_bytes())
        return out


def decoded_size_limit(payload_length: int) -> int:
    """Spec 8: the most bytes a coded tensor's decoded form may take, for a payload this long."""
    return C.DECODE_SLACK + C.DECODE_EXPANSION * payload_length


def csr_bytes(shape: tuple[int, ...] | list[int], nnz: int) -> int:
    """Spec 8's size of the CSR form: (rows + 1) 8-byte row pointers, 32 bytes per stored entry
    (column, value, code, position); rows is the first dim (1 for rank 0)."""
    return 8 * ((shape[0] if len(shape) else 1) + 1) + 32 * nnz


def n_blocks(count: int, block_log2: int) -> int:
    return -(-count >> block_log2) if count else 0


def pack_payload(p: CodedPayload) -> bytes:
    """Serialize a coded payload in the order spec.md 5.2 lists its parts."""
    k = 0 if p.codebook is None else len(p.codebook)
    parts = [BLOB_HEADER.pack(p.code_bits, p.index_bits, p.block_log2, 0, k, p.nnz, p.index_count, 0)]
    if p.codebook is not None:
        parts.append(np.asarray(p.codebook, dtype="<f4").tobytes())
    if p.values is not None:
        parts.append(np.asarray(p.values, dtype="<f4").tobytes())
    streams = [s for s in (p.codes, p.index) if s is not None]
    parts += p.tables()
    parts += [np.asarray(s.block_bits, dtype="<u4").tobytes() for s in streams]
    parts += [bytes(s.data) for s in streams]
    return b"".join(parts)


class _Cursor:
    """Reads little-endian fields from a payload, failing with the absolute file offset."""

    def __init__(self, buf: bytes | memoryview, base: int, name: str):
        self.buf = memoryview(buf)
        self.pos = 0
        self.base = base
        self.name = name

    def fail(self, message: str, rule: str, at: int | None = None) -> FormatError:
        where = self.pos if at is None else at
        return FormatError(f"tensor {self.name!r}: {message}", self.base + where, rule)

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"{what} needs {n} bytes but only {len(self.buf) - self.pos} remain", "5.2")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * itemsize, what), dtype=dtype)


def _read_listed_table(cur: _Cursor, alphabet: int, what: str) -> HuffmanTable:
    """Spec 6.1: L, count[1..L], then the symbols, which must be valid, distinct and sorted."""
    start = cur.pos
    (max_len,) = struct.unpack("<B", cur.take(1, f"{what} table length"))
    if max_len > C.MAX_CODE_LENGTH:
        raise cur.fail(f"{what} table's longest code length {max_len} exceeds {C.MAX_CODE_LENGTH}", "6", start)
    counts = [int(c) for c in cur.array("<u4", max_len, f"{what} length counts")]
    n = sum(counts)
    if n > alphabet:
        raise cur.fail(f"{what} table lists {n} symbols, alphabet has {alphabet}", "6.1", start)
    symbols = cur.array("<u2", n, f"{what} symbols")
    if n and int(symbols.max()) >= alphabet:
        raise cur.fail(f"{what} symbol {int(symbols.max())} outside alphabet of {alphabet}", "6.1", start)
    if len(np.unique(symbols)) != n:
        raise cur.fail(f"{what} table repeats a symbol", "6.1", start)
    ends = np.cumsum(counts)
    rising = np.diff(symbols.astype(np.int64)) > 0
    if n > 1 and not np.all(rising | np.isin(np.arange(1, n), ends)):
        raise cur.fail(f"{what} table's symbols of one code length are not in increasing order", "6.1", start)
    return HuffmanTable(counts, symbols)


def _read_compact_table(cur: _Cursor, alphabet: int, what: str) -> HuffmanTable:
    """Spec 6.2: L, then ``alphabet`` length operations; each costs 1 to 8 bits, so at most
    ``alphabet`` bytes are looked at."""
    start = cur.pos
    (max_len,) = struct.unpack("<B", cur.take(1, f"{what} table length"))
    if max_len > C.MAX_CODE_LENGTH:
        raise cur.fail(f"{what} table's longest code length {max_len} exceeds {C.MAX_CODE_LENGTH}", "6", start)
    if max_len == 0:
        return HuffmanTable([], np.zeros(0, dtype=np.uint16))
    bits = bitarray(endian="big")
    bits.frombytes(cur.buf[cur.pos : cur.pos + min(alphabet, len(cur.buf) - cur.pos)])
    try:
        ops = np.fromiter(canonical_decode(bits, LENGTH_OP_COUNTS, list(range(len(LENGTH_OP_BITS)))),
                          dtype=np.int64, count=alphabet)
    except ValueError:
        raise cur.fail(f"{what} table's code lengths are not {alphabet} valid length operations", "6.2") from None
    used = int(LENGTH_OP_BITS[ops].sum())
    nbytes = (used + 7) // 8
    if bits[used : 8 * nbytes].any():
        raise cur.fail(f"{what} table's padding bits are not zero", "6.2", cur.pos + nbytes - 1)
    step = np.where(ops == _UP, 1, np.where(ops == _DOWN, -1, 0))
    walk = np.cumsum(step)
    last_set = np.maximum.accumulate(np.where(ops >= _SET, np.arange(alphabet), -1))
    base = np.where(last_set >= 0, ops[last_set] - _SET - walk[last_set], 0)
    lengths = base + walk
    if lengths.min() < 0 or lengths.max() != max_len:
        raise cur.fail(f"{what} table's code lengths leave 0..{max_len} or never reach L = {max_len}", "6.2", start)
    cur.take(nbytes, f"{what} table")
    return HuffmanTable.from_lengths(lengths)


def _parse_table(cur: _Cursor, alphabet: int, count: int, what: str, compact: bool) -> HuffmanTable:
    """Read a table in either form, then check what spec 6 requires of every table."""
    start = cur.pos
    table = (_read_compact_table if compact else _read_listed_table)(cur, alphabet, what)
    counts, n = table.counts, len(table.symbols)
    if count == 0:
        if n:
            raise cur.fail(f"{what} stream is empty but its table is not", "6", start)
        return table
    if n == 0:
        raise cur.fail(f"{what} stream has {count} symbols but an empty code table", "6", start)
    if counts[-1] == 0:
        raise cur.fail(f"{what} table's longest length has no codes", "6", start)
    if n == 1:
        if counts != [1]:
            raise cur.fail(f"{what} single-symbol table must use one code of length 1", "6", start)
    else:
        kraft = sum(c << (len(counts) - i - 1) for i, c in enumerate(counts))
        if kraft != 1 << len(counts):
            raise cur.fail(f"{what} code lengths do not form a complete prefix code", "6", start)
    return table


def _check_block_bits(cur: _Cursor, bits: np.ndarray, count: int, log2: int, table: HuffmanTable, what: str) -> int:
    """Each block's bit length must fit its symbol count; returns the bytes the blocks occupy."""
    sizes = np.full(len(bits), 1 << log2, dtype=np.int64)
    if len(sizes):
        sizes[-1] = count - ((len(sizes) - 1) << log2)
    min_len = next(i + 1 for i, c in enumerate(table.counts) if c) if count else 0
    b = bits.astype(np.int64)
    if np.any(b < sizes * min_len) or np.any(b > sizes * table.max_length):
        raise cur.fail(f"{what} block bit lengths do not fit their symbol counts", "5.2")
    return int(((b + 7) // 8).sum())


def parse_payload(buf: bytes | memoryview, encoding: str, numel: int, base: int, name: str) -> CodedPayload:
    """Parse and bound-check a coded payload; ``base`` is its file offset (for messages)."""
    cur = _Cursor(buf, base, name)
    code_bits, index_bits, log2, r0, k, nnz, icount, r1 = BLOB_HEADER.unpack(cur.take(32, "payload header"))
    if r0 or r1:
        raise cur.fail("reserved header fields must be 0", "5.2", 0)
    if not C.MIN_BLOCK_LOG2 <= log2 <= C.MAX_BLOCK_LOG2:
        raise cur.fail(f"block_log2 {log2} outside {C.MIN_BLOCK_LOG2}..{C.MAX_BLOCK_LOG2}", "5.2", 2)
    if nnz > numel:
        raise cur.fail(f"nnz {nnz} exceeds the tensor's {numel} elements", "5.2", 8)
    sparse = encoding in C.SPARSE_ENCODINGS
    quantized = encoding in C.CODEBOOK_ENCODINGS
    compact = encoding in C.COMPACT_TABLE_ENCODINGS
    if quantized:
        if not C.MIN_BITS <= code_bits <= C.MAX_BITS:
            raise cur.fail(f"code_bits {code_bits} outside {C.MIN_BITS}..{C.MAX_BITS}", "5.2", 0)
        if not 1 <= k <= 1 << code_bits:
            raise cur.fail(f"codebook size {k} outside 1..2^code_bits", "5.2", 4)
    elif code_bits or k:
        raise cur.fail("code_bits and K must be 0 for sparse-float32-huffman", "5.4", 0)
    if sparse:
        if not C.MIN_BITS <= index_bits <= C.MAX_BITS:
            raise cur.fail(f"index_bits {index_bits} outside {C.MIN_BITS}..{C.MAX_BITS}", "5.2", 1)
        skip = (1 << index_bits) - 1
        if not nnz <= icount <= nnz + (numel - nnz) // skip:
            raise cur.fail(f"index_count {icount} inconsistent with nnz {nnz} and shape", "5.2", 16)
        if (icount == 0) != (nnz == 0):
            raise cur.fail("an index stream without entries cannot hold fillers only", "5.2", 16)
    else:
        if index_bits or icount:
            raise cur.fail("index_bits and index_count must be 0 for a dense encoding", "5.3", 1)
        if nnz != numel:
            raise cur.fail(f"dense encoding must store all {numel} elements, stores {nnz}", "5.3", 8)

    codebook = values = None
    if quantized:
        codebook = cur.array("<f4", k, "codebook")
        if not np.all(np.isfinite(codebook)) or np.any(np.diff(codebook) <= 0):
            raise cur.fail("codebook must be finite and strictly increasing", "5.2")
    else:
        values = cur.array("<f4", nnz, "values")
        if not np.all(np.isfinite(values)):
            raise cur.fail("stored values must be finite", "5.4")
    code_table = _parse_table(cur, k, nnz, "code", compact) if quantized else None
    index_table = _parse_table(cur, 1 << index_bits, icount, "index", compact) if sparse else None
    code_bits_arr = cur.array("<u4", n_blocks(nnz, log2), "code block table") if quantized else None
    index_bits_arr = cur.array("<u4", n_blocks(icount, log2), "index block table") if sparse else None
    codes = index = None
    if quantized:
        size = _check_block_bits(cur, code_bits_arr, nnz, log2, code_table, "code")
        codes = Stream(code_table, code_bits_arr, cur.take(size, "code stream"))
    if sparse:
        size = _check_block_bits(cur, index_bits_arr, icount, log2, index_table, "index")
        index = Stream(index_table, index_bits_arr, cur.take(size, "index stream"))
    if cur.pos != len(cur.buf):
        raise cur.fail(f"{len(cur.buf) - cur.pos} trailing bytes after the streams", "5.2")
    return CodedPayload(encoding, code_bits, index_bits, log2, nnz, icount, codebook, values, codes, index)
