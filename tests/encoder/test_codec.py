import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from dcm.encoder import decode_tensor, encode_tensor, kmeans_1d, mask_by_quality, mask_by_sparsity
from dcm.encoder import huffman, relindex
from dcm.errors import EncodeError
from dcm.format import constants as C


def _check_exact(w, mask, rec):
    dec = decode_tensor(rec)
    assert dec.shape == w.shape
    assert np.all(dec[~mask] == 0)
    parts = decode_tensor(rec, "parts")
    if parts.codebook is not None:
        assert np.array_equal(dec[mask], parts.codebook[parts.codes])
    else:
        assert np.array_equal(dec[mask], w[mask])


@settings(max_examples=60, deadline=None)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
       density=st.floats(0, 1), code_bits=st.integers(1, 16), index_bits=st.integers(1, 16),
       seed=st.integers(0, 2**16))
def test_round_trip_exact(shape, density, code_bits, index_bits, seed):
    rng = np.random.default_rng(seed)
    w = np.asarray(rng.normal(size=shape) * 10.0 ** rng.integers(-30, 30), dtype=np.float32)
    mask = rng.random(shape) < density
    rec = encode_tensor(w, mask, code_bits=code_bits, index_bits=index_bits, block_log2=8)
    _check_exact(w, mask, rec)
    rec = encode_tensor(w, mask, quantize=False, index_bits=index_bits, block_log2=8)
    _check_exact(w, mask, rec)


EXTREMES = [3.4e38, -3.4e38, 1e-45, -1e-45, 1.2e-38, 65504.0, -1e30]  # max, denormal min, tiny normal


@pytest.mark.parametrize("case", ["empty", "all_zero", "no_zero", "one_value", "long_gaps", "extreme"])
def test_edge_cases(case):
    w = {"empty": np.zeros((0, 5)), "all_zero": np.zeros((7, 9)), "no_zero": np.arange(1, 41).reshape(5, 8),
         "one_value": np.full((3, 3), 2.5), "long_gaps": np.zeros((3, 100_000)),
         "extreme": np.array(EXTREMES * 3 + [0.0] * 4).reshape(5, 5)}[case].astype(np.float32)
    if case == "long_gaps":
        w[0, 0], w[2, -1] = 1.0, -2.0
    for bits in (1, 2, 5):
        rec = encode_tensor(w, code_bits=8, index_bits=bits, block_log2=8)
        np.testing.assert_array_equal(decode_tensor(rec), w)
    if case == "no_zero":
        assert rec.encoding == C.ENC_DENSE_COMPACT


def test_fillers_count():
    pos = np.array([0, 100])
    sym = relindex.encode_positions(pos, 3)  # M = 7: gap 99 = 14 fillers + 1
    assert list(sym) == [0] + [7] * 14 + [1]
    np.testing.assert_array_equal(relindex.decode_positions(sym.astype(np.int64), 3, 101, 2), pos)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    w = np.ones((4, 4), np.float32)
    w[1, 2] = bad
    with pytest.raises(EncodeError, match="NaN or Inf"):
        encode_tensor(w)


def test_bad_bit_widths_rejected():
    with pytest.raises(EncodeError):
        encode_tensor(np.ones((4, 4), np.float32), code_bits=17)
    with pytest.raises(EncodeError):
        encode_tensor(np.eye(4, dtype=np.float32), index_bits=0)


def test_kmeans_exact_when_few_values_and_inits():
    v = np.array([3, 1, 2, 1, 3], np.float32)
    cb, lab = kmeans_1d(v, 4)
    assert list(cb) == [1, 2, 3] and np.array_equal(cb[lab], v)
    rng = np.random.default_rng(0)
    x = rng.normal(size=50_000).astype(np.float32)
    errs = {}
    for init in ("linear", "density", "random"):
        cb, lab = kmeans_1d(x, 16, init=init)
        assert len(cb) <= 16 and np.all(np.diff(cb) > 0)
        errs[init] = float(np.mean((cb[lab] - x) ** 2))
        assert errs[init] < 0.02
    assert kmeans_1d(x, 16, init="linear")[0].tobytes() == kmeans_1d(x, 16, init="linear")[0].tobytes()


def test_masks():
    w = np.array([[0.1, -3, 2], [0.5, -0.2, 1]], np.float32)
    assert mask_by_sparsity(w, 0.5).sum() == 3
    assert np.array_equal(mask_by_sparsity(w, 0.5), np.abs(w) >= 1)
    assert np.array_equal(mask_by_quality(w, 1.0), np.abs(w) > np.std(w))
    ties = np.ones(10)
    assert np.array_equal(mask_by_sparsity(ties, 0.7), np.arange(10) < 3)


def test_huffman_length_limit_and_single_symbol():
    freq = np.array([2**i for i in range(40)], dtype=np.int64)  # Fibonacci-like skew -> long codes
    lengths = huffman.code_lengths(freq)
    assert lengths.max() <= C.MAX_CODE_LENGTH
    assert sum(2.0 ** -lengths) == pytest.approx(1.0)
    sym = np.zeros(1000, np.int64)
    table = huffman.build_table(sym, 4)
    assert table.counts == [1]
    stream = huffman.encode_stream(sym, table, 8)
    np.testing.assert_array_equal(huffman.decode_stream(stream, 1000, 8), sym)


def test_huffman_near_entropy():
    rng = np.random.default_rng(0)
    sym = np.minimum(rng.geometric(0.3, 200_000) - 1, 31)
    bits, _ = huffman.coded_bits(sym, 32)
    p = np.bincount(sym) / len(sym)
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum() * len(sym)
    assert entropy <= bits <= entropy * 1.03


def test_auto_index_bits_is_no_worse():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 300)).astype(np.float32)
    m = mask_by_sparsity(w, 0.97)
    auto = encode_tensor(w, m, code_bits=5, index_bits="auto")
    for b in range(2, 9):
        assert len(auto.payload) <= len(encode_tensor(w, m, code_bits=5, index_bits=b).payload) + 8


def test_deterministic_bytes():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    m = mask_by_sparsity(w, 0.9)
    assert encode_tensor(w, m, code_bits=4).payload == encode_tensor(w.copy(), m.copy(), code_bits=4).payload


@settings(max_examples=80, deadline=None)
@given(alphabet=st.integers(1, 600), seed=st.integers(0, 2**32 - 1), skew=st.booleans())
def test_compact_table_round_trips_any_code(alphabet, seed, skew):
    """Spec 6.2 both ways: any length-limited code (unused symbols, jumps, lengths up to 24) reads
    back as the same canonical table, in fewer bytes than the listed form once symbols are many."""
    from dcm.format.blobs import _Cursor, _parse_table

    rng = np.random.default_rng(seed)
    freq = rng.integers(0, 50, alphabet) * (rng.random(alphabet) < 0.8)
    if skew:  # long codes and large steps between neighbours
        freq = np.where(freq > 0, 2 ** rng.integers(0, 40, alphabet), 0)
    freq[rng.integers(alphabet)] += 1
    table = huffman.table_from_lengths(huffman.code_lengths(freq))
    data = table.to_compact_bytes(alphabet)
    back = _parse_table(_Cursor(data + b"rest", 0, "t"), alphabet, 10, "code", compact=True)
    assert back.counts == table.counts
    np.testing.assert_array_equal(back.symbols, table.symbols)
    np.testing.assert_array_equal(back.lengths(alphabet), huffman.code_lengths(freq))
    if len(table.symbols) >= 8:
        assert len(data) < len(table.to_bytes())


def test_compact_and_listed_tables_decode_alike():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(30, 50)).astype(np.float32)
    m = mask_by_sparsity(w, 0.8)
    compact = encode_tensor(w, m, code_bits=6, index_bits=4)
    listed = encode_tensor(w, m, code_bits=6, index_bits=4, compact_tables=False)
    assert (compact.encoding, listed.encoding) == (C.ENC_SPARSE_COMPACT, C.ENC_SPARSE)
    np.testing.assert_array_equal(decode_tensor(compact), decode_tensor(listed))
    assert len(compact.payload) < len(listed.payload)
