"""Reduced-size runs of every ``dcm demo`` model: a few hundred images, one or two epochs each.

Each asserts what the demo promises: the file is written and reloads, its error is measured by
running the file with dcm's runtime, it is smaller than the float32 parameters by the factor
stated here, every pruned position stays zero through quantization and into the file, and every
layer holds at most 2^bits values.
"""
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcm import demo, mnist  # noqa: E402
from dcm.compress.layers import per_layer, weight_layers  # noqa: E402
from dcm.encoder.codec import decode_tensor  # noqa: E402
from dcm.format.reader import read  # noqa: E402
from dcm.format.stats import tensor_stats  # noqa: E402

FAST = dict(train_images=512, dense_epochs=1, prune_epochs=2, prune_steps=2, quant_epochs=1, batch=64)
CASES = {  # model -> (reduced recipe, smallest ratio the file must reach)
    "lenet300": (replace(demo.RECIPES["lenet300"], **FAST), 60.0),
    "lenet5": (replace(demo.RECIPES["lenet5"], **FAST), 30.0),
    "vit": (replace(demo.RECIPES["vit"], **FAST, model_args={"dim": 64, "depth": 1, "heads": 2, "hidden": 128},
                    exporter="torchscript"), 3.0),
    "lstm": (replace(demo.RECIPES["lstm"], **FAST, model_args={"hidden": 32}), 5.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reduced_demo(name, tmp_path):
    recipe, factor = CASES[name]
    seen = {}

    def on_stage(stage, model):
        refs = weight_layers(model)
        seen[stage] = {n: ref.weight.detach().clone() for n, ref in refs.items()}
        seen["sparsity"], seen["bits"] = per_layer(recipe.sparsity, refs), per_layer(recipe.bits, refs)
        seen["nonzero"] = sum(int((p != 0).sum()) for p in model.parameters())
        weights = {id(ref.weight) for ref in refs.values()}
        seen["other_values"] = max(len(torch.unique(p[p != 0])) for p in model.parameters() if id(p) not in weights)

    r = demo.run(recipe, tmp_path, quiet=True, log=lambda line: None, on_stage=on_stage)
    path = tmp_path / f"{name}.dcm"
    assert path.is_file() and r["dcm_bytes"] == path.stat().st_size

    _, test = mnist.load()
    assert r["error_file"] == demo.file_error(path, test)  # measured from the file, by dcm's runtime
    assert r["ratio"] == r["float32_bytes"] / r["dcm_bytes"] >= factor, r["ratio"]

    pruned, quantized = seen["pruned"], seen["quantized"]
    assert set(seen["sparsity"]) == set(pruned)  # the recipe prunes every compressible weight
    for n, w in pruned.items():  # pruning reached its target, and quantization kept every zero
        assert float((w == 0).float().mean()) == pytest.approx(seen["sparsity"][n], abs=0.01), n
        assert torch.all(quantized[n][w == 0] == 0), n
    for n, w in quantized.items():
        assert len(torch.unique(w[w != 0])) <= 1 << seen["bits"][n], n
    if recipe.other_bits is not None:  # biases, norm scales, positions: shared too
        assert seen["other_values"] <= 1 << recipe.other_bits

    # The file holds exactly the torch model's non-zeros (conversion splits, transposes and
    # concatenates parameters, and adds scalar constants and the unit scale of a LayerNorm that has
    # none of its own, but never fills a zero), and each pruned weight at most 2^bits values (a
    # dense-coded tensor may join several shared parameters: the LSTM's two bias vectors become one).
    model = read(path)
    values = [decode_tensor(t) for t in model.tensors.values() if t.dtype == "float32" and t.numel > 1]
    in_file = sum(int(np.count_nonzero(v)) for v in values if not np.all(v == 1))
    assert in_file == seen["nonzero"]
    sparse_coded = [tensor_stats(t) for t in model.tensors.values() if t.encoding.startswith("sparse-codebook")]
    assert sparse_coded and all(t["codebook_bytes"] // 4 <= 1 << max(seen["bits"].values()) for t in sparse_coded)
    assert r["layers"] and "Table 1" in demo.format_tables(r)  # the per-layer table, read from the file


def test_shift_moves_each_image_by_its_own_offset():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    out = demo.shift(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # each output is the input moved by some (dy, dx) in [-1, 1]^2, zero filled
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if torch.equal(out[i, 0], _moved(x[i, 0], dy, dx))]
        assert matches, out[i, 0]


def _moved(img, dy, dx):
    out = torch.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_listed_tables_keep_every_weight_and_cost_more(tmp_path):
    """The ablation's "compact Huffman tables" column: the same file with format 1.0 tables."""
    from benchmarks.compression import listed_tables_bytes, with_listed_tables

    recipe, _ = CASES["lenet300"]
    r = demo.run(replace(recipe, prune_epochs=1, prune_steps=1), tmp_path, quiet=True, log=lambda line: None)
    path = tmp_path / "lenet300.dcm"
    listed = with_listed_tables(read(path))
    compact = read(path)
    assert any(t.encoding.endswith("-compact") for t in compact.tensors.values())
    assert not any(t.encoding.endswith("-compact") for t in listed.tensors.values())
    for name, t in compact.tensors.items():
        assert np.array_equal(decode_tensor(listed.tensors[name]), decode_tensor(t)), name
    assert listed_tables_bytes(path) > r["dcm_bytes"]


def test_ablation_rows_add_one_technique_each_and_end_at_the_demo_recipe():
    from benchmarks.compression import ABLATION, VARIANTS, ablation_rows

    rows = ablation_rows()  # raises unless the chain ends at RECIPES["lenet300"]
    assert rows[len(ABLATION) - 1][2] == demo.RECIPES["lenet300"]
    assert all(len(change) == 1 for _, change in ABLATION[1:])  # one technique per row
    assert len(rows) == len(ABLATION) + len(VARIANTS)
    for _, change, recipe in rows[len(ABLATION):]:  # a variant changes only the last row
        assert recipe == replace(demo.RECIPES["lenet300"], **change)
