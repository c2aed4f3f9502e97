"""Model -> .dcm bytes (spec.md sections 2-4), and an atomic, deterministic ``write``."""
from __future__ import annotations

import glob
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

from dcm.errors import FormatError
from dcm.format import constants as C
from dcm.format.attrs import attrs_to_json
from dcm.format.model import Model


def _align(n: int) -> int:
    return -(-n // C.PAYLOAD_ALIGNMENT) * C.PAYLOAD_ALIGNMENT


def _section(kind: bytes, payload: bytes) -> bytes:
    head = kind + struct.pack("<IQ", 0, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _graph_document(model: Model, table: list[dict]) -> dict:
    return {
        "opset": model.opset,
        "inputs": [{"name": v.name, "dtype": v.dtype, "shape": list(v.shape)} for v in model.inputs],
        "outputs": [{"name": v.name, "dtype": v.dtype, "shape": list(v.shape)} for v in model.outputs],
        "nodes": [
            {"op": n.op, "name": n.name, "inputs": list(n.inputs), "outputs": list(n.outputs),
             "attrs": attrs_to_json(n.attrs)}
            for n in model.nodes
        ],
        "tensors": table,
        "metadata": dict(model.metadata),
    }


def to_bytes(model: Model) -> bytes:
    """Serialize ``model``. Same model, same bytes: no timestamps, keys sorted, fixed layout."""
    table, blobs, offset = [], [], 0
    for rec in model.tensors.values():
        table.append({"name": rec.name, "dtype": rec.dtype, "shape": [int(d) for d in rec.shape],
                      "encoding": rec.encoding, "offset": offset, "length": len(rec.payload)})
        padded = _align(len(rec.payload))
        blobs.append(bytes(rec.payload) + b"\0" * (padded - len(rec.payload)))
        offset += padded
    try:
        text = json.dumps(_graph_document(model, table), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FormatError(f"graph cannot be stored as JSON: {exc}", rule="4") from exc
    if len(text) > C.MAX_GRAPH_BYTES:
        raise FormatError(f"graph JSON is {len(text)} bytes, limit {C.MAX_GRAPH_BYTES}", rule="4")
    # spec 2: bytes 128..131 must never read "DICM"; JSON whitespace after "{" moves them.
    json_start = C.FILE_HEADER_SIZE + C.SECTION_HEADER_SIZE
    while text[C.DICOM_MAGIC_OFFSET - json_start : C.DICOM_MAGIC_OFFSET - json_start + 4] == C.DICOM_MAGIC:
        text = b"{ " + text[1:]
    # spec 3.2: pad the JSON with spaces so the DATA payload starts on a 64-byte boundary.
    data_start = json_start + len(text) + C.SECTION_CRC_SIZE + C.SECTION_HEADER_SIZE
    text += b" " * (_align(data_start) - data_start)
    head = C.SIGNATURE + struct.pack("<HH", C.VERSION_MAJOR, C.VERSION_MINOR)
    head += struct.pack("<I", zlib.crc32(head))
    return b"".join([head, _section(C.SECTION_GRAPH, text), _section(C.SECTION_DATA, b"".join(blobs)),
                     _section(C.SECTION_END, b"")])


def write(path: str | os.PathLike, model: Model) -> None:
    """Write ``model`` to ``path`` atomically and deterministically."""
    atomic_write_bytes(path, to_bytes(model))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """A temp file in the target folder, fsync, then rename over ``path``.

    A crash (even SIGKILL) at any point leaves either the old file or the new one at ``path``,
    never a mix. Temp files are named ``.<name>.<pid>.<random>.tmp``; those left by a writer that
    was killed (its pid no longer running) are removed after the next successful write.

    The file gets the mode a plain ``open(path, "w")`` would give it: an overwritten file keeps its
    mode, a new one gets 0666 less the umask (``mkstemp`` alone would make it 0600, unreadable by
    a model server running as another user).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)
    _remove_stale_temps(folder, path.name)


def _target_mode(path: Path) -> int:
    """The permission bits ``path`` should end with: its own if it exists, else 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it,
    and setting it briefly would race with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems cannot open folders, which is not an error."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _remove_stale_temps(folder: Path, name: str) -> None:
    prefix = f".{name}."
    for entry in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                entry.unlink()
            except OSError:
                pass
