"""``dcm inspect --plot`` and the sensitivity plot write real images; without matplotlib the error
names the extra to install."""
import sys

import pytest

from dcm.cli import main
from dcm.format import write
from tests.conftest import small_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_inspect_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    write(tmp_path / "m.dcm", small_model())
    assert main(["inspect", str(tmp_path / "m.dcm"), "--plot", str(tmp_path / "m.png"), "-q"]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcm", "m.png"]


def test_sensitivity_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from dcm.compress.sensitivity import plot

    plot({"fc1": {0.0: 0.98, 0.5: 0.97, 0.9: 0.80}, "fc2": {0.0: 0.98, 0.5: 0.98, 0.9: 0.95}}, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_without_matplotlib_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    write(tmp_path / "m.dcm", small_model())
    assert main(["inspect", str(tmp_path / "m.dcm"), "--plot", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'dcm[plot]'" in err
    assert not (tmp_path / "m.png").exists()


def _many_tensor_model(layers=30):
    import numpy as np

    from dcm.encoder import encode_raw, encode_tensor
    from dcm.format import Model, Node, ValueInfo, to_bytes
    from dcm.format.reader import parse
    from dcm.format.stats import model_stats

    rng = np.random.default_rng(0)
    tensors, nodes, x = {}, [], "x"
    for i in range(layers):
        w = rng.normal(size=(32, 32)).astype(np.float32)
        w[np.abs(w) < 1] = 0
        wn, bn = f"layers.{i}.linear.weight", f"layers.{i}.linear.bias"
        tensors[wn] = encode_tensor(w, code_bits=5, name=wn)
        tensors[bn] = encode_raw(rng.normal(size=32).astype(np.float32), bn)
        nodes.append(Node("Gemm", [x, wn, bn], [f"h{i}"], {"transB": 1}, f"/layers.{i}/Gemm"))
        x = f"h{i}"
    m = Model([ValueInfo("x", "float32", ["batch", 32])], [ValueInfo(x, "float32", ["batch", 32])], nodes, tensors, {})
    data = to_bytes(m)
    model = parse(data)
    return model, model_stats(model, len(data))


def test_small_tensors_share_one_bar_and_no_bytes_are_lost():
    from dcm.plot import MAX_BARS, bars

    _, stats = _many_tensor_model()
    shown = bars(stats["tensors"])
    assert len(shown) == MAX_BARS < len(stats["tensors"])
    assert sum(stored for _, _, stored, _ in shown) == sum(r["payload_bytes"] for r in stats["tensors"])
    assert shown[-1][0].startswith(f"{len(stats['tensors']) - MAX_BARS + 1} tensors")
    assert len(bars(stats["tensors"][:5])) == 5  # a small model: one bar per tensor


def test_share_axis_ends_at_one_and_the_legend_leaves_the_axis_label_free():
    pytest.importorskip("matplotlib")
    from dcm.plot import figure, pyplot

    model, stats = _many_tensor_model()
    fig = figure(model, stats)
    try:
        ax = fig.axes[0]
        assert ax.get_xlim() == (0, 1)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        label = ax.xaxis.label.get_window_extent(renderer)
        legend = fig.legends[0].get_window_extent(renderer)
        assert not label.overlaps(legend)
        assert legend.y1 <= label.y0
    finally:
        pyplot().close(fig)


def test_sensitivity_plot_names_the_metric(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from dcm.compress.sensitivity import plot

    fig = plot({"fc1": {0.0: 1.9, 0.9: 4.0}}, tmp_path / "s.png", ylabel="test error (%)")
    assert fig.axes[0].get_ylabel() == "test error (%)"
