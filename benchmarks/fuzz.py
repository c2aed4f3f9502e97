"""Structure-aware fuzzing of ``dcm.format.read``, ``validate`` and ``InferenceSession``.

Random byte flips mostly die at the CRC checks, so most mutations here are made *inside* the
structure and the checksums are then recomputed: JSON values in the graph, fields of a tensor's
payload header, Huffman length counts, block bit lengths, section lengths, truncation. Every input
must end in success or a ``DcmError``; anything else is a crash.

    python -m benchmarks.fuzz --iterations 100000 [--workers 2] [--seed 0]

prints inputs tried, outcomes, crashes, hangs and the peak RSS, and writes
benchmarks/results/fuzz.json. A crash's input is saved under benchmarks/results/crashes/.
``tests/format/test_fuzz.py`` runs the same mutator for a few thousand cases under hypothesis.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache

import numpy as np

from dcm.encoder import encode_raw, encode_tensor
from dcm.errors import DcmError
from dcm.format import Model, Node, ValueInfo, read, to_bytes, validate
from dcm.format import constants as C
from dcm.runtime import InferenceSession

HANG_SECONDS = 10
MEMORY_LIMIT = 4 << 30  # per worker (address space), like libFuzzer's -rss_limit_mb
MAX_FEED_ELEMENTS = 1 << 16


# --- seeds: real files, every encoding, an MLP, LeNet-5 and a small conv net -----------------

def _pruned(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) > density] = 0
    return w


def _mlp() -> Model:
    rng = np.random.default_rng(1)
    tensors = {
        "w1": encode_tensor(_pruned(rng, (16, 12), 0.3), code_bits=3, index_bits=2, name="w1"),
        "b1": encode_raw(rng.normal(size=16).astype(np.float32), "b1"),
        "w2": encode_tensor(rng.normal(size=(4, 16)).astype(np.float32), code_bits=4, name="w2"),
        "w3": encode_tensor(_pruned(rng, (4, 4), 0.8), quantize=False, index_bits=3, name="w3"),
    }
    nodes = [Node("Gemm", ["x", "w1", "b1"], ["h"], {"transB": 1}, "fc1"), Node("Relu", ["h"], ["r"], {}, "relu"),
             Node("Gemm", ["r", "w2"], ["y0"], {"transB": 1}, "fc2"),
             Node("Gemm", ["y0", "w3"], ["y"], {"transB": 1}, "fc3")]
    return Model([ValueInfo("x", "float32", ["batch", 12])], [ValueInfo("y", "float32", ["batch", 4])],
                 nodes, tensors, {"producer": "fuzz"})


def _lenet5() -> Model:
    """LeNet-5's graph at the paper's densities (Table 3), random weights."""
    rng = np.random.default_rng(2)
    shapes = {"c1": ((20, 1, 5, 5), 0.66), "c2": ((50, 20, 5, 5), 0.12), "f1": ((500, 800), 0.08),
              "f2": ((10, 500), 0.19)}
    tensors = {n: encode_tensor(_pruned(rng, s, d), code_bits=8 if n[0] == "c" else 5, index_bits=5, name=n)
               for n, (s, d) in shapes.items()}
    for n, (s, _) in shapes.items():
        tensors[n + "b"] = encode_raw(rng.normal(size=s[0]).astype(np.float32), n + "b")
    tensors["shape"] = encode_raw(np.array([-1, 800], np.int64), "shape")
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [Node("Conv", ["x", "c1", "c1b"], ["a"], {"kernel_shape": [5, 5]}, "conv1"),
             Node("MaxPool", ["a"], ["b"], pool, "pool1"),
             Node("Conv", ["b", "c2", "c2b"], ["c"], {"kernel_shape": [5, 5]}, "conv2"),
             Node("MaxPool", ["c"], ["d"], pool, "pool2"),
             Node("Reshape", ["d", "shape"], ["e"], {}, "flatten"),
             Node("Gemm", ["e", "f1", "f1b"], ["f"], {"transB": 1}, "fc1"), Node("Relu", ["f"], ["g"], {}, "relu"),
             Node("Gemm", ["g", "f2", "f2b"], ["h"], {"transB": 1}, "fc2"),
             Node("Softmax", ["h"], ["y"], {"axis": 1}, "softmax")]
    return Model([ValueInfo("x", "float32", ["batch", 1, 28, 28])], [ValueInfo("y", "float32", ["batch", 10])],
                 nodes, tensors, {})


def _convnet() -> Model:
    """Padding, strides, groups, BN-free residual add, pooling variants, concat."""
    rng = np.random.default_rng(3)
    tensors = {
        "k1": encode_tensor(_pruned(rng, (8, 3, 3, 3), 0.5), code_bits=4, index_bits=3, name="k1"),
        "k2": encode_tensor(_pruned(rng, (8, 1, 3, 3), 0.9), code_bits=2, name="k2"),
        "k3": encode_tensor(_pruned(rng, (4, 16), 0.4), quantize=False, index_bits=4, name="k3"),
    }
    nodes = [Node("Conv", ["x", "k1"], ["a"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, "c1"),
             Node("LeakyRelu", ["a"], ["b"], {"alpha": 0.1}, "lrelu"),
             Node("Conv", ["b", "k2"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 8}, "dw"),
             Node("Add", ["b", "c"], ["d"], {}, "res"),
             Node("AveragePool", ["d"], ["e"], {"kernel_shape": [2, 2], "strides": [2, 2]}, "avg"),
             Node("GlobalAveragePool", ["d"], ["g"], {}, "gap"),
             Node("Flatten", ["g"], ["h"], {"axis": 1}, "flat"),
             Node("Concat", ["h", "h"], ["i"], {"axis": 1}, "cat"),
             Node("Gemm", ["i", "k3"], ["j"], {"transB": 1}, "fc"),
             Node("Sigmoid", ["j"], ["y"], {}, "sig")]
    return Model([ValueInfo("x", "float32", ["batch", 3, 9, 9])],
                 [ValueInfo("y", "float32", ["batch", 4]), ValueInfo("e", "float32", ["batch", 8, 2, 2])],
                 nodes, tensors, {})


@lru_cache(maxsize=None)
def seeds() -> tuple[bytes, ...]:
    return tuple(to_bytes(m()) for m in (_mlp, _lenet5, _convnet))


# --- framing helpers ------------------------------------------------------------------------

def split(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(16-byte header, [(type, payload)]) of a well-framed file."""
    pos, out = C.FILE_HEADER_SIZE, []
    while pos < len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from("<Q", data, pos + 8)
        out.append((kind, data[pos + 16 : pos + 16 + length]))
        pos += 16 + length + 4
    return data[: C.FILE_HEADER_SIZE], out


def join(header: bytes, sections: list[tuple[bytes, bytes]], reserved: int = 0) -> bytes:
    """Frame sections with correct lengths and CRCs (the header CRC too)."""
    head = header[:12] + struct.pack("<I", zlib.crc32(header[:12]))
    parts = [head]
    for kind, payload in sections:
        h = kind + struct.pack("<IQ", reserved, len(payload))
        parts += [h, payload, struct.pack("<I", zlib.crc32(payload, zlib.crc32(h)))]
    return b"".join(parts)


def refresh_crcs(data: bytes) -> bytes:
    """Recompute every CRC a (possibly damaged) framing still lets us find."""
    buf = bytearray(data)
    if len(buf) >= 16:
        buf[12:16] = struct.pack("<I", zlib.crc32(bytes(buf[:12])))
    pos = C.FILE_HEADER_SIZE
    while pos + 20 <= len(buf):
        (length,) = struct.unpack_from("<Q", buf, pos + 8)
        end = pos + 16 + length
        if end + 4 > len(buf):
            break
        buf[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(buf[pos:end])))
        pos = end + 4
    return bytes(buf)


def _graph_and_data(data: bytes) -> tuple[dict, bytes]:
    _, sections = split(data)
    doc = json.loads(sections[0][1])
    return doc, sections[1][1]


def rebuild(doc: dict, blob: bytes) -> bytes:
    """A file from a (mutated) graph document and DATA payload, padded so DATA stays aligned."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    start = C.FILE_HEADER_SIZE + 2 * C.SECTION_HEADER_SIZE + len(text) + C.SECTION_CRC_SIZE
    text += b" " * (-start % C.PAYLOAD_ALIGNMENT)
    header = C.SIGNATURE + struct.pack("<HH", C.VERSION_MAJOR, C.VERSION_MINOR) + b"\0" * 4
    return join(header, [(C.SECTION_GRAPH, text), (C.SECTION_DATA, blob), (C.SECTION_END, b"")])


# --- mutators ---------------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 7, 8, 15, 16, 17, 24, 25, 31, 32, 63, 64, 255, 256, 65535, 65536, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**64 - 1, -1, -(2**31), -(2**63)]


def _interesting(rng: random.Random) -> int:
    return rng.choice(INTERESTING) + rng.choice([0, 0, 0, -1, 1])


def _json_value(rng: random.Random, old):
    pick = rng.randrange(10)
    if pick < 4 and isinstance(old, (int, float)) and not isinstance(old, bool):
        return _interesting(rng)
    if pick < 5:
        return rng.choice([None, True, "", "x" * rng.choice([1, 5000]), [], {}, 1.5, float("nan"), float("inf"), -0.0])
    if pick < 7 and isinstance(old, str):
        return rng.choice(["batch", "x", "y", "w1", "Gemm", "Conv", "float64", "int64", "sparse-codebook-huffman",
                           "raw", old + "_", old[:-1], "\u00e9\u6f22"])
    if pick < 8 and isinstance(old, list):
        out = list(old)
        if out and rng.random() < 0.5:
            del out[rng.randrange(len(out))]
        elif out:
            out.insert(rng.randrange(len(out) + 1), rng.choice(out))
        else:
            out.append(_interesting(rng))
        return out
    return _interesting(rng)


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    doc, blob = _graph_and_data(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        paths = [p for p, _ in _walk(doc) if p]
        path = rng.choice(paths)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = _json_value(rng, parent[path[-1]])
    return rebuild(doc, blob)


def _payload_field_offsets(payload: bytes) -> list[tuple[int, str]]:
    """Offsets of the numeric fields of a coded payload: header, table counts, block bit lengths."""
    fields = [(0, "B"), (1, "B"), (2, "B"), (3, "B"), (4, "I"), (8, "Q"), (16, "Q"), (24, "Q")]
    if len(payload) < 32:
        return fields
    k, nnz, icount = struct.unpack_from("<IQQ", payload, 4)
    pos = 32 + 4 * k + (0 if payload[0] else 4 * nnz)  # codebook, or float32 values
    for _ in range(2):
        if pos >= len(payload):
            break
        n = payload[pos]
        fields.append((pos, "B"))
        fields += [(pos + 1 + 4 * i, "I") for i in range(n) if pos + 5 + 4 * i <= len(payload)]
        counts = [struct.unpack_from("<I", payload, pos + 1 + 4 * i)[0] for i in range(n) if pos + 5 + 4 * i <= len(payload)]
        pos += 1 + 4 * n + 2 * sum(counts)
    fields += [(p, "I") for p in range(pos, min(len(payload) - 3, pos + 64), 4)]
    return [(o, f) for o, f in fields if o + struct.calcsize(f) <= len(payload)]


def mutate_payload(data: bytes, rng: random.Random) -> bytes:
    doc, blob = _graph_and_data(data)
    coded = [t for t in doc["tensors"] if t["encoding"] != C.ENC_RAW]
    t = rng.choice(coded or doc["tensors"])
    buf = bytearray(blob)
    payload = bytes(buf[t["offset"] : t["offset"] + t["length"]])
    for _ in range(rng.choice([1, 1, 2])):
        offset, fmt = rng.choice(_payload_field_offsets(payload))
        bits = 8 * struct.calcsize(fmt)
        value = _interesting(rng) % (1 << bits)
        struct.pack_into("<" + fmt, buf, t["offset"] + offset, value)
        payload = bytes(buf[t["offset"] : t["offset"] + t["length"]])
    if rng.random() < 0.3:  # damage the streams too
        for _ in range(rng.randrange(1, 8)):
            buf[t["offset"] + rng.randrange(t["length"])] ^= 1 << rng.randrange(8)
    return rebuild(doc, bytes(buf))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        op = rng.randrange(5)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2 and len(buf) >= i + 8:
            struct.pack_into("<Q", buf, i, _interesting(rng) % 2**64)
        elif op == 3:
            del buf[i : i + rng.choice([1, 4, 64])]
        else:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 64])))
    return refresh_crcs(bytes(buf)) if rng.random() < 0.8 else bytes(buf)


def mutate_sections(data: bytes, rng: random.Random) -> bytes:
    header, sections = split(data)
    op = rng.randrange(6)
    if op == 0:  # truncate anywhere
        return data[: rng.randrange(len(data))]
    if op == 1:  # drop, duplicate or reorder sections
        i = rng.randrange(len(sections))
        if rng.random() < 0.5:
            del sections[i]
        else:
            sections.insert(rng.randrange(len(sections) + 1), sections[i])
    elif op == 2:  # unknown sections, critical or not
        sections.insert(rng.randrange(len(sections) + 1), (rng.choice([b"ZZZZ", b"zzzz", b"DAT\0"]), b"abc"))
    elif op == 3:  # lie about a section length
        buf = bytearray(join(header, sections))
        pos = C.FILE_HEADER_SIZE
        for _ in range(rng.randrange(len(sections))):
            (n,) = struct.unpack_from("<Q", buf, pos + 8)
            pos += 20 + n
        struct.pack_into("<Q", buf, pos + 8, _interesting(rng) % 2**64)
        return refresh_crcs(bytes(buf)) if rng.random() < 0.5 else bytes(buf)
    elif op == 4:  # version, reserved field
        header = header[:8] + struct.pack("<HH", rng.choice([0, 1, 2, 65535]), rng.choice([0, 1, 65535])) + header[12:]
        return join(header, sections, reserved=rng.choice([0, 0, 1]))
    else:  # grow or shrink the graph text without changing its meaning
        kind, text = sections[0]
        sections[0] = (kind, text.rstrip() if rng.random() < 0.5 else text + b" " * rng.randrange(1, 130))
    return join(header, sections)


MUTATORS = (mutate_json, mutate_payload, mutate_bytes, mutate_sections)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = rng.choice(MUTATORS)(data, rng)
    if rng.random() < 0.2:  # stack a second mutation
        try:
            out = rng.choice(MUTATORS)(out, rng)
        except (ValueError, KeyError, IndexError, TypeError, struct.error, AttributeError):
            pass  # the first mutation broke the structure the second one needs
    return out


def generate(rng: random.Random) -> bytes:
    seed = rng.choice(seeds())
    try:
        return mutate(seed, rng)
    except (ValueError, KeyError, IndexError, TypeError, struct.error, AttributeError):
        return seed[: rng.randrange(len(seed))]


# --- the property ------------------------------------------------------------------------------

def _feed(shape: list) -> np.ndarray | None:
    dims = [d if isinstance(d, int) else 2 for d in shape]
    if int(np.prod(dims, dtype=np.float64)) > MAX_FEED_ELEMENTS:
        return None
    return np.random.default_rng(0).normal(size=dims).astype(np.float32)


def check(data: bytes) -> str:
    """'ok' or 'rejected'; anything but a DcmError propagates (that is a crash)."""
    problems = validate(data)
    try:
        model = read(data)
        sess = InferenceSession(model, threads=1)
        feeds = {}
        for v in model.inputs:
            x = _feed(v.shape) if v.dtype == "float32" else None
            if x is None:
                return "loaded"
            feeds[v.name] = x
        sess.run(None, feeds)
    except DcmError:
        return "rejected"
    if problems:
        raise AssertionError(f"validate reported {problems[0]} but read + run accepted the file")
    return "ok"


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _campaign(args: tuple[int, int]) -> dict:
    seed, count = args
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes of address space;
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))  # sanitize.sh bounds malloc instead
    np.seterr(all="ignore")  # overflow in a fuzzed model's arithmetic is not a finding
    stats = {"tried": 0, "outcomes": {}, "crashes": [], "hangs": 0, "slowest_s": 0.0}
    for _ in range(count):
        data = generate(rng)
        t = time.perf_counter()
        signal.alarm(HANG_SECONDS)
        try:
            outcome = check(data)
        except Hang:
            outcome = "hang"
            stats["hangs"] += 1
        except Exception:  # noqa: BLE001 - the fuzzer's job is to catch everything
            outcome = "crash"
            stats["crashes"].append({"input": data.hex(), "error": traceback.format_exc(limit=3)})
        finally:
            signal.alarm(0)
        stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t)
        stats["tried"] += 1
        stats["outcomes"][outcome] = stats["outcomes"].get(outcome, 0) + 1
    stats["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import RESULTS, save

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="fuzz", help="results file: benchmarks/results/NAME.json")
    a = p.parse_args(argv)
    chunk = 2_000
    jobs = [(a.seed * 1_000_003 + i, min(chunk, a.iterations - i * chunk)) for i in range(-(-a.iterations // chunk))]
    start = time.perf_counter()
    total = {"tried": 0, "outcomes": {}, "crashes": [], "hangs": 0, "slowest_s": 0.0, "max_rss_mib": 0.0}
    with ProcessPoolExecutor(a.workers) as pool:
        for s in pool.map(_campaign, jobs):
            total["tried"] += s["tried"]
            total["hangs"] += s["hangs"]
            total["crashes"] += s["crashes"]
            total["slowest_s"] = max(total["slowest_s"], s["slowest_s"])
            total["max_rss_mib"] = max(total["max_rss_mib"], s["max_rss_mib"])
            for k, v in s["outcomes"].items():
                total["outcomes"][k] = total["outcomes"].get(k, 0) + v
            print(f"\r{total['tried']}/{a.iterations} tried, {len(total['crashes'])} crashes", end="", file=sys.stderr)
    print(file=sys.stderr)
    elapsed = time.perf_counter() - start
    for i, c in enumerate(total["crashes"][:20]):
        (RESULTS / "crashes").mkdir(parents=True, exist_ok=True)
        (RESULTS / "crashes" / f"crash-{i}.dcm").write_bytes(bytes.fromhex(c["input"]))
    print(f"| inputs tried | ok | loaded | rejected | crashes | hangs (>{HANG_SECONDS} s) | slowest input | max RSS / worker | time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    o = total["outcomes"]
    print(f"| {total['tried']:,} | {o.get('ok', 0):,} | {o.get('loaded', 0):,} | {o.get('rejected', 0):,} | "
          f"{len(total['crashes'])} | {total['hangs']} | {total['slowest_s']:.2f} s | {total['max_rss_mib']:.0f} MiB | "
          f"{elapsed:.0f} s |")
    for c in total["crashes"][:3]:
        print(c["error"], file=sys.stderr)
    save(a.name, {"iterations": a.iterations, "seed": a.seed, "workers": a.workers, "elapsed_s": elapsed,
                  **{k: v for k, v in total.items() if k != "crashes"}, "crashes": len(total["crashes"])})
    return 1 if total["crashes"] or total["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
