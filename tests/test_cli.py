"""The dcm command line: real commands, their exit codes and one-line errors."""
import re
import subprocess
import sys

import numpy as np
import pytest

from dcm.cli import main
from dcm.format import write
from tests.conftest import small_model


@pytest.fixture
def dcm_file(tmp_path):
    path = tmp_path / "m.dcm"
    write(path, small_model())
    return path


def test_validate_inspect_run(dcm_file, tmp_path, capsys):
    assert main(["validate", str(dcm_file)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["inspect", str(dcm_file), "--kernels"]) == 0
    out = capsys.readouterr().out
    assert "sparse-codebook-huffman" in out and "ratio" in out
    sizes = dict(re.findall(r"(GRPH|DATA|DEND|file header) ([\d,]+) B", out))
    assert sum(int(v.replace(",", "")) for v in sizes.values()) == dcm_file.stat().st_size
    assert main(["inspect", str(dcm_file), "--json"]) == 0
    np.save(tmp_path / "x.npy", np.ones((3, 12), np.float32))
    assert main(["run", str(dcm_file), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "y.npy").shape == (3, 4)


@pytest.mark.parametrize("setup,code", [
    ("missing", 2), ("directory", 2), ("empty", 1), ("png", 1), ("dicom", 1),
])
def test_validate_bad_files(tmp_path, capsys, setup, code):
    p = tmp_path / "f.dcm"
    if setup == "directory":
        p.mkdir()
    elif setup == "empty":
        p.write_bytes(b"")
    elif setup == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    elif setup == "dicom":
        p.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 100)
    assert main(["validate", str(p)]) == code
    assert capsys.readouterr().out.strip()


def test_run_errors_are_one_line(dcm_file, tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((3, 5), np.float32))
    r = subprocess.run([sys.executable, "-m", "dcm.cli", "run", str(dcm_file), "-i", str(tmp_path / "bad.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "axis 1" in r.stderr and "Traceback" not in r.stderr


def test_verify_and_export(dcm_file, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["verify", str(dcm_file)]) == 0
    assert "OK" in capsys.readouterr().out
    out = tmp_path / "m.onnx"
    assert main(["export", str(dcm_file), "-o", str(out)]) == 0
    assert main(["convert", str(out), "-o", str(tmp_path / "back.dcm"), "--exact", "--quiet"]) == 0
    assert main(["validate", str(tmp_path / "back.dcm")]) == 0
    assert main(["run", str(out), "-i", str(out)]) == 2  # an ONNX file passed to run


def test_demo_fast(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["demo", "--fast", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and (tmp_path / "lenet300.dcm").exists()
    assert main(["validate", str(tmp_path / "lenet300.dcm")]) == 0


def test_convert_post_training_with_check(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from dcm import zoo
    from dcm.converters.torch_in import torch_to_onnx_bytes

    src = tmp_path / "m.onnx"
    src.write_bytes(torch_to_onnx_bytes(zoo.LeNet300().eval(), torch.zeros(1, 1, 28, 28)))
    np.savez(tmp_path / "data.npz", input=np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    out = tmp_path / "m.dcm"
    assert main(["convert", str(src), "-o", str(out), "--sparsity", "0.9", "--sparsity", "fc3.weight=0.5",
                 "--code-bits", "conv=8,fc=6", "--index-bits", "auto", "--check", str(tmp_path / "data.npz")]) == 0
    captured = capsys.readouterr()
    assert "drift output: max abs" in captured.out and "top-1 agreement" in captured.out
    assert "accuracy" in captured.err  # the post-training warning
    assert main(["validate", str(out)]) == 0


def test_convert_errors_leave_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    out = tmp_path / "x.dcm"
    assert main(["convert", str(bad), "-o", str(out)]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
    assert not out.exists()


def test_inspect_paper_columns(dcm_file, capsys):
    import json

    assert main(["inspect", str(dcm_file), "--paper", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    rows = {r["layer"]: r for r in stats["paper"]}
    coded = [t for t in stats["tensors"] if t["encoding"] != "raw"]
    assert set(rows) == {t["name"] for t in coded} | {"total"}
    total = rows["total"]
    assert total["weights"] == sum(t["elements"] for t in coded)
    assert total["rate_pqh"] == pytest.approx(sum(t["payload_bytes"] for t in coded) / (4 * total["weights"]))
    assert rows["w1"]["weight_bits_pq"] == 3 and rows["w1"]["index_bits_pq"] >= 2
    assert main(["inspect", str(dcm_file), "--paper"]) == 0
    assert "weights% (P)" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["validate"], ["inspect"], ["verify"]])
def test_json_output_parses(dcm_file, capsys, command):
    import json

    if command == ["verify"]:
        pytest.importorskip("onnxruntime")
    assert main([*command, str(dcm_file), "--json"]) == 0
    json.loads(capsys.readouterr().out)


def test_run_json_and_quiet(dcm_file, tmp_path, capsys):
    import json

    np.save(tmp_path / "x.npy", np.ones((2, 12), np.float32))
    assert main(["run", str(dcm_file), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--json", "-q"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["shape"] == [2, 4] and np.load(out["file"]).shape == (2, 4)


def test_bench_reports_latency_and_every_node(dcm_file, capsys):
    import json

    assert main(["bench", str(dcm_file), "--batch", "4", "--runs", "3", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 4 and report["median_ms"] > 0
    assert [n["op"] for n in report["nodes"]] == ["Gemm", "Relu", "Gemm", "Gemm"]
    assert all(n["ms"] >= 0 for n in report["nodes"]) and report["nodes"][0]["kernel"] in ("sparse", "dense")
    assert main(["bench", str(dcm_file), "--runs", "2", "--kernels", "dense"]) == 0
    out = capsys.readouterr().out
    assert "median" in out and "sparse" not in out


def test_bench_on_given_inputs_against_onnxruntime(dcm_file, tmp_path, capsys):
    import json

    pytest.importorskip("onnxruntime")
    np.savez(tmp_path / "x.npz", np.ones((5, 12), np.float32))
    assert main(["bench", str(dcm_file), "--inputs", str(tmp_path / "x.npz"), "--onnxruntime", "--runs", "3",
                 "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"].endswith("x.npz") and report["onnxruntime_median_ms"] > 0
    assert report["dcm_vs_onnxruntime"] == pytest.approx(report["median_ms"] / report["onnxruntime_median_ms"])
    np.savez(tmp_path / "bad.npz", np.ones((5, 11), np.float32))
    assert main(["bench", str(dcm_file), "--inputs", str(tmp_path / "bad.npz"), "-q"]) == 2
    assert "size 11 on axis 1" in capsys.readouterr().err


@pytest.fixture
def lenet_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    from dcm import zoo
    from dcm.converters.torch_in import torch_to_onnx_bytes

    torch.manual_seed(0)
    src = tmp_path / "lenet.onnx"
    src.write_bytes(torch_to_onnx_bytes(zoo.LeNet300().eval(), torch.zeros(1, 1, 28, 28)))
    np.savez(tmp_path / "data.npz", input=np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32))
    return src


def test_lossy_default_says_so_and_verify_source_measures_it(lenet_onnx, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = str(tmp_path / "data.npz")
    lossy, exact = str(tmp_path / "lossy.dcm"), str(tmp_path / "exact.dcm")
    assert main(["convert", str(lenet_onnx), "-o", lossy, "-q"]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "changed weight values" in x]
    assert "--exact" in line and "--check" in line
    change = float(re.search(r"largest change ([\d.]+)%", line).group(1))
    assert 0 < change < 5  # an 8-bit codebook moves a weight by a fraction of a percent of the range
    assert main(["verify", lossy, "--inputs", data]) == 0  # against its own export: the runtime is right
    capsys.readouterr()
    assert main(["verify", lossy, "--source", str(lenet_onnx), "--inputs", data]) == 1  # against the source
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "top-1 agreement" in out and str(lenet_onnx) in out
    assert main(["convert", str(lenet_onnx), "-o", exact, "--exact", "-q"]) == 0
    assert "changed weight values" not in capsys.readouterr().err
    assert main(["verify", exact, "--source", str(lenet_onnx), "--inputs", data]) == 0


def test_convert_help_says_what_the_default_does(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "8-bit codebooks" in text and "lossy" in text and "--exact" in text


def test_long_names_and_metadata_are_cut_visibly(tmp_path, capsys):
    from dcm.encoder import encode_tensor
    from dcm.format import Model, Node, ValueInfo

    rng = np.random.default_rng(0)
    prefix = "encoder.layers.0.self_attention.output_projection"
    names = [f"{prefix}.weight_a", f"{prefix}.weight_b"]
    tensors = {n: encode_tensor(rng.normal(size=(4, 4)).astype(np.float32), name=n) for n in names}
    node_name = "/encoder/layers.0/self_attention/output_projection/MatMul_with_a_long_name"
    nodes = [Node("Gemm", ["x", names[0]], ["h"], {"transB": 1}, node_name),
             Node("Gemm", ["h", names[1]], ["y"], {"transB": 1}, "g2")]
    recipe = '{"sparsity": {' + ", ".join(f'"layer{i}": 0.9' for i in range(60)) + "}}"
    write(tmp_path / "m.dcm", Model([ValueInfo("x", "float32", ["batch", 4])], [ValueInfo("y", "float32", ["batch", 4])],
                                    nodes, tensors, {"recipe": recipe}))
    assert main(["inspect", str(tmp_path / "m.dcm"), "--kernels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (meta,) = [x for x in lines if x.strip().startswith("recipe:")]
    assert meta.endswith("…") and len(meta) < len(recipe)
    rows = [x.split()[0] for x in lines if x.split() and x.split()[0].startswith("encoder")]
    assert len(rows) == 2 and rows[0] != rows[1]  # two tensors, two visibly different names
    assert all(r.endswith(("weight_a", "weight_b")) for r in rows)
    (kernel,) = [x for x in lines if node_name in x]
    assert kernel.split()[:2] == [node_name, "Gemm"]  # the name does not run into the op column


def test_sparsity_given_twice_for_one_name_is_an_error(lenet_onnx, tmp_path, capsys):
    out = tmp_path / "m.dcm"
    assert main(["convert", str(lenet_onnx), "-o", str(out), "--sparsity", "0.5", "--sparsity", "0.8"]) == 2
    assert "--sparsity given twice for every layer" in capsys.readouterr().err
    assert main(["convert", str(lenet_onnx), "-o", str(out), "--sparsity", "fc1=0.5", "--sparsity", "fc1=0.6"]) == 2
    assert "given twice for 'fc1'" in capsys.readouterr().err
    assert not out.exists()
