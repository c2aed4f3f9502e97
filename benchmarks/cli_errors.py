"""Every CLI command given bad input: the exit code, the one stderr line, and that nothing was written.

    python -m benchmarks.cli_errors      # prints the table of docs/reliability.md (markdown) and
                                         # writes benchmarks/results/cli_errors.json

``tests/test_cli_errors.py`` runs the same cases and asserts: the documented exit code, exactly
one line on stderr, no traceback, no file created or changed. When run as root, the read-only
cases make the folder immutable (``chattr +i``), since root ignores folder permissions; where
that is not possible either, they are skipped. Cases with ``stdout_closed`` run with the reading
end of stdout already closed (``dcm ... | head`` after head exits): they must exit 141 with
nothing on stderr.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    command: str  # the CLI command this case exercises
    what: str
    argv: list[str]  # {w} is the workspace folder
    exit_code: int
    read_only: bool = False  # needs a folder the process cannot write to
    stdout_closed: bool = False  # nobody reads stdout: exit quietly, no BrokenPipeError
    writes: bool = False  # may create new files (never change existing ones)


CASES = [
    *[Case(cmd, f"{what}", [cmd, *pre, f"{{w}}/{name}", *post], code)
      for cmd, pre, post, codes in [
          ("validate", [], [], {"missing": 2, "folder": 2, "empty": 1, "dicom": 1, "png": 1, "onnx": 1}),
          ("inspect", [], [], {"missing": 2, "folder": 2, "empty": 2, "dicom": 2, "png": 2, "onnx": 2}),
          ("run", [], ["-i", "{w}/x.npy", "-o", "{w}/out"], {"missing": 2, "folder": 2, "empty": 2, "dicom": 2,
                                                             "png": 2, "onnx": 2}),
          ("export", [], ["-o", "{w}/out.onnx"], {"missing": 2, "folder": 2, "empty": 2, "dicom": 2, "png": 2}),
          ("verify", [], [], {"missing": 2, "folder": 2, "empty": 2, "png": 2, "onnx": 2}),
          ("bench", [], ["--runs", "1"], {"missing": 2, "folder": 2, "empty": 2, "dicom": 2, "png": 2, "onnx": 2}),
          ("convert", [], ["-o", "{w}/out.dcm"], {"missing": 2, "folder": 2, "empty": 2, "png": 2, "dcm": 2}),
      ]
      for what, code in codes.items()
      for name in [{"missing": "nope.dcm", "folder": "folder", "empty": "empty.dcm", "dicom": "scan.dcm",
                    "png": "image.png", "onnx": "model.onnx", "dcm": "model.dcm"}[what]]],
    Case("run", "input of the wrong shape", ["run", "{w}/model.dcm", "-i", "{w}/x_shape.npy", "-o", "{w}/out"], 2),
    Case("run", "input of the wrong dtype", ["run", "{w}/model.dcm", "-i", "{w}/x_f64.npy", "-o", "{w}/out"], 2),
    Case("run", "input file missing", ["run", "{w}/model.dcm", "-i", "{w}/none.npy", "-o", "{w}/out"], 2),
    Case("run", "input is a PNG, not .npy", ["run", "{w}/model.dcm", "-i", "{w}/image.png", "-o", "{w}/out"], 2),
    Case("run", "no input given", ["run", "{w}/model.dcm", "-o", "{w}/out"], 2),
    Case("run", "unknown input name", ["run", "{w}/model.dcm", "-i", "z={w}/x.npy", "-o", "{w}/out"], 2),
    Case("run", "output folder is a file", ["run", "{w}/model.dcm", "-i", "{w}/x.npy", "-o", "{w}/empty.dcm"], 2),
    Case("run", "read-only output folder", ["run", "{w}/model.dcm", "-i", "{w}/x.npy", "-o", "{w}/ro"], 2, True),
    Case("convert", "read-only output folder", ["convert", "{w}/model.onnx", "-o", "{w}/ro/m.dcm"], 2, True),
    Case("export", "read-only output folder", ["export", "{w}/model.dcm", "-o", "{w}/ro/m.onnx"], 2, True),
    Case("verify", "inputs .npz of the wrong shape", ["verify", "{w}/model.dcm", "--inputs", "{w}/bad.npz"], 2),
    Case("demo", "output folder is a file", ["demo", "--fast", "--out", "{w}/empty.dcm"], 2),
    *[Case("convert", f"--sparsity {s}", ["convert", "{w}/model.onnx", "-o", "{w}/m.dcm", "--sparsity", s], 2)
      for s in ("1.5", "-0.1", "fc1=2", "abc", "=0.5", "fc9=0.5", "0=0.9", "/0/Gemm=0.9")],
    *[Case("convert", f"--code-bits {b}", ["convert", "{w}/model.onnx", "-o", "{w}/m.dcm", "--code-bits", b], 2)
      for b in ("fc=5,xyz=3", "0", "17", "five")],
    Case("convert", "--index-bits 0", ["convert", "{w}/model.onnx", "-o", "{w}/m.dcm", "--index-bits", "0"], 2),
    Case("convert", "--exact with --code-bits", ["convert", "{w}/model.onnx", "-o", "{w}/m.dcm", "--exact",
                                                 "--code-bits", "5"], 2),
    Case("inspect", "--plot into a missing folder", ["inspect", "{w}/model.dcm", "--plot", "{w}/no/dir/out.png"], 2),
    Case("inspect", "--batch 0", ["inspect", "{w}/model.dcm", "--kernels", "--batch", "0"], 2),
    *[Case("bench", f"{opt} {v}", ["bench", "{w}/model.dcm", opt, v], 2)
      for opt, v in (("--batch", "0"), ("--runs", "0"), ("--threads", "0"), ("--runs", "many"))],
    Case("verify", "--rtol -1", ["verify", "{w}/model.dcm", "--rtol", "-1"], 2),
    Case("verify", "--atol nan", ["verify", "{w}/model.dcm", "--atol", "nan"], 2),
    Case("verify", "--source missing", ["verify", "{w}/model.dcm", "--source", "{w}/nope.onnx"], 2),
    Case("verify", "--source not ONNX", ["verify", "{w}/model.dcm", "--source", "{w}/image.png"], 2),
    Case("inspect", "--json, stdout closed (| head)", ["inspect", "--json", "{w}/model.dcm"], 141, stdout_closed=True),
    Case("bench", "stdout closed (| head)", ["bench", "{w}/model.dcm", "--runs", "2"], 141, stdout_closed=True),
    Case("convert", "--json, stdout closed (| head)", ["convert", "--json", "--exact", "{w}/model.onnx", "-o",
                                                       "{w}/piped.dcm"], 141, stdout_closed=True, writes=True),
]


def make_workspace() -> Path:
    """A world-readable folder holding every kind of bad (and one good) input."""
    from dcm.converters import export_onnx
    from dcm.format import write
    from benchmarks.fuzz import _mlp

    w = Path(tempfile.mkdtemp(prefix="dcm-cli-"))
    w.chmod(0o755)
    model = _mlp()
    write(w / "model.dcm", model)
    export_onnx(model, w / "model.onnx")
    (w / "empty.dcm").write_bytes(b"")
    (w / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0" + b"\0" * 64)
    (w / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\0" * 40)
    (w / "folder").mkdir()
    (w / "ro").mkdir()
    (w / "ro").chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(w / "ro")], capture_output=True)
    np.save(w / "x.npy", np.ones((2, 12), np.float32))
    np.save(w / "x_shape.npy", np.ones((2, 13), np.float32))
    np.save(w / "x_f64.npy", np.ones((2, 12), np.float64))
    np.savez(w / "bad.npz", x=np.ones((2, 5), np.float32))
    for p in w.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return w


def read_only_works(w: Path) -> bool:
    try:
        (w / "ro" / "probe").write_bytes(b"")
    except OSError:
        return True
    (w / "ro" / "probe").unlink()
    return False


def remove_workspace(w: Path) -> None:
    subprocess.run(["chattr", "-i", str(w / "ro")], capture_output=True)
    (w / "ro").chmod(0o755)
    shutil.rmtree(w)


def snapshot(w: Path) -> dict[str, bytes]:
    return {str(p.relative_to(w)): p.read_bytes() for p in sorted(w.rglob("*")) if p.is_file()}


def run_case(case: Case, w: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "dcm.cli", *(a.replace("{w}", str(w)) for a in case.argv)]
    if not case.stdout_closed:
        return subprocess.run(argv, capture_output=True, text=True, cwd=w, timeout=300)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=w)
    p.stdout.close()  # as `| head` does once it has its lines: every write to stdout now fails
    try:
        err = p.stderr.read()
        p.wait(timeout=300)
    finally:
        p.stderr.close()
    return subprocess.CompletedProcess(argv, p.returncode, "", err)


def main() -> int:
    from benchmarks.common import save

    w = make_workspace()
    rows = []
    try:
        print("| command | bad input | exit | message (stderr, one line) |")
        print("|---|---|---:|---|")
        for case in CASES:
            if case.read_only and not read_only_works(w):
                continue
            r = run_case(case, w)
            text = (r.stderr.strip() or r.stdout.strip() or "(nothing)").replace(str(w), "…")
            rows.append({"command": f"dcm {case.command}", "input": case.what, "exit": r.returncode, "message": text})
            print(f"| `dcm {case.command}` | {case.what} | {r.returncode} | {text.replace('|', chr(92) + '|')} |")
    finally:
        remove_workspace(w)
    print(f"wrote {save('cli_errors', {'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
