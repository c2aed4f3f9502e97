"""Numbers of spec.md, in one place. Change them only together with the spec."""
from __future__ import annotations

import numpy as np

# spec 2: 8-byte signature (PNG-style), then u16 major, u16 minor, u32 CRC-32 of bytes 0..11.
SIGNATURE = b"\x89DCM\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 1
FILE_HEADER_SIZE = 16
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

# spec 3: sections.
SECTION_HEADER_SIZE = 16  # type[4], reserved u32 (0), length u64
SECTION_CRC_SIZE = 4
SECTION_GRAPH = b"GRPH"
SECTION_DATA = b"DATA"
SECTION_END = b"DEND"
PAYLOAD_ALIGNMENT = 64

# spec 8: hard limits, checked before anything is allocated.
MAX_GRAPH_BYTES = 64 * 1024 * 1024
MAX_RANK = 8
MAX_ELEMENTS = 2**31 - 1
MAX_TENSORS = 1_000_000
MAX_NODES = 1_000_000
MAX_NAME_BYTES = 4096
MAX_ATTR_ELEMENTS = 1 << 16  # spec 4.3: a tensor-valued attribute
MIN_BITS, MAX_BITS = 1, 16
MAX_CODE_LENGTH = 24
MIN_BLOCK_LOG2, MAX_BLOCK_LOG2 = 8, 22
DEFAULT_BLOCK_LOG2 = 16
# spec 8: a coded tensor's decoded form may take at most SLACK + EXPANSION bytes per payload byte.
DECODE_SLACK = 1 << 20
DECODE_EXPANSION = 1024

# spec 5: tensor encodings.
ENC_RAW = "raw"
ENC_SPARSE = "sparse-codebook-huffman"
ENC_DENSE = "dense-codebook-huffman"
ENC_SPARSE_FLOAT = "sparse-float32-huffman"
# spec 5.5 (minor version 1.1): the same three layouts with compact Huffman tables (spec 6.2).
ENC_SPARSE_COMPACT = ENC_SPARSE + "-compact"
ENC_DENSE_COMPACT = ENC_DENSE + "-compact"
ENC_SPARSE_FLOAT_COMPACT = ENC_SPARSE_FLOAT + "-compact"
COMPACT_TABLE_ENCODINGS = (ENC_SPARSE_COMPACT, ENC_DENSE_COMPACT, ENC_SPARSE_FLOAT_COMPACT)
WITH_COMPACT_TABLES = dict(zip((ENC_SPARSE, ENC_DENSE, ENC_SPARSE_FLOAT), COMPACT_TABLE_ENCODINGS))
CODED_ENCODINGS = (ENC_SPARSE, ENC_DENSE, ENC_SPARSE_FLOAT) + COMPACT_TABLE_ENCODINGS
ENCODINGS = (ENC_RAW,) + CODED_ENCODINGS
# Each coded encoding's layout (spec 5.2-5.4): whether it has an index stream, a codebook.
SPARSE_ENCODINGS = (ENC_SPARSE, ENC_SPARSE_FLOAT, ENC_SPARSE_COMPACT, ENC_SPARSE_FLOAT_COMPACT)
CODEBOOK_ENCODINGS = (ENC_SPARSE, ENC_DENSE, ENC_SPARSE_COMPACT, ENC_DENSE_COMPACT)

# spec 5.1: raw dtypes, always little-endian.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
