"""``dcm demo``: the paper's Table 1 row on MNIST, from a clean clone, measured from the real file.

dense baseline -> pruning with retraining (Zhu & Gupta gradual schedule) -> trained quantization
-> .dcm -> reload with dcm's own runtime (not torch) -> test error of the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dcm import mnist
from dcm.progress import bar


@dataclass
class Recipe:
    """Everything that decides a demo run; the defaults are what the README's figures used."""

    model: str = "lenet300"
    model_args: dict = field(default_factory=dict)  # passed to the zoo model (smaller ones for tests)
    train_images: int | None = None  # train on the first N images only (None: the whole split)
    seed: int = 0
    batch: int = 64
    dense_epochs: int = 30
    dense_lr: float = 0.05
    prune_epochs: int = 30  # the first `prune_steps` of them raise sparsity, the rest retrain
    prune_steps: int = 10
    prune_lr: float = 0.02
    # per layer (names or kinds, as dcm.compress.Pruner takes them), or "sensitivity": each layer's
    # from a scan of the dense model (dcm.compress.sensitivity.sparsity_from_scan) on
    # `sensitivity_images` random training images, held out of every training stage, allowing each layer
    # a one-shot error rise of at most `sensitivity_threshold`, or, if `sensitivity_overall` is set, the
    # rise that prunes that share of all the weights
    sparsity: dict[str, float] | str = field(default_factory=dict)
    sensitivity_threshold: float = 0.01
    sensitivity_overall: float | None = None
    sensitivity_images: int = 1000
    bits: dict[str, int] = field(default_factory=lambda: {"conv": 8, "fc": 5})
    quant_epochs: int = 8
    quant_lr: float = 0.002
    index_bits: str | int = "auto"
    augment: int = 0  # random shifts of up to this many pixels in every training stage (0: none)
    size_penalty: float | dict[str, float] = 0.0  # entropy-constrained weight sharing (0: plain k-means)
    other_bits: int | None = None  # share and code biases, norm scales, positions too (None: float32)
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    exporter: str = "torchscript"  # torch's ONNX exporter for from_torch: the smaller graph per model
    weight_decay: float = 1e-4


RECIPES = {
    "lenet300": Recipe(model="lenet300", augment=2, sparsity={"fc1": 0.98, "fc2": 0.95, "fc3": 0.8}, bits={"fc": 4},
                       size_penalty=0.03, other_bits=3),
    "lenet5": Recipe(model="lenet5", augment=2, dense_epochs=15, prune_epochs=15, prune_steps=8, quant_epochs=4,
                     sparsity={"conv1": 0.5, "conv2": 0.93, "fc1": 0.99, "fc2": 0.9}, bits={"conv": 5, "fc": 4},
                     size_penalty=0.03, other_bits=3),
    "vit": Recipe(model="vit", model_args={"dim": 96, "hidden": 192}, exporter="dynamo",
                  optimizer="adamw", weight_decay=0.05, batch=128, augment=1,
                  dense_epochs=12, dense_lr=2e-3, prune_epochs=24, prune_steps=8, prune_lr=1e-3,
                  quant_epochs=6, quant_lr=2e-4, sparsity={"fc": 0.92, "embed": 0.5}, bits={"fc": 4, "conv": 5},
                  other_bits=4),
    "lstm": Recipe(model="lstm", optimizer="adamw", weight_decay=0.0, batch=128, augment=1,
                   dense_epochs=15, dense_lr=3e-3, prune_epochs=40, prune_steps=10, prune_lr=1e-3,
                   quant_epochs=20, quant_lr=1e-4, sparsity={"fc": 0.87, "lstm.weight_ih_l0": 0.6}, bits={"fc": 5},
                   size_penalty=0.03, other_bits=5),
}


def shift(x, pixels: int, g):
    """Each image moved by its own random offset of up to ``pixels`` in each direction (zero fill):
    the cheapest augmentation that helps MNIST nets, whose 10,000 training images they overfit."""
    import torch

    n, c, h, w = x.shape
    pad = torch.nn.functional.pad(x, (pixels,) * 4)
    dy, dx = (torch.randint(0, 2 * pixels + 1, (n, 1), generator=g) for _ in range(2))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    return pad[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _train(model, data, epochs: int, lr: float, seed: int, desc: str, recipe: Recipe, quiet: bool,
           on_epoch: Callable[[int], None] | None = None) -> None:
    import torch

    x, y = (torch.from_numpy(a) for a in data)
    batch, augment = recipe.batch, recipe.augment
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in bar(range(epochs), desc, enabled=not quiet):
        if on_epoch:
            on_epoch(epoch)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = shift(x[idx], augment, g) if augment else x[idx]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def _torch_error(model, data) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(data[0])).argmax(1).numpy()
    return float((pred != data[1]).mean())


def file_error(path: Path, data, batch: int = 1000) -> float:
    """Test error measured by running the .dcm file with dcm's runtime."""
    from dcm.runtime import InferenceSession

    sess = InferenceSession(path, batch_hint=batch)
    name = sess.get_inputs()[0].name
    wrong = 0
    for i in range(0, len(data[0]), batch):
        logits = sess.run(None, {name: data[0][i : i + batch]})[0]
        wrong += int((logits.argmax(1) != data[1][i : i + batch]).sum())
    return wrong / len(data[0])


def _hold_out(train, recipe: Recipe):
    """(training images, scan images): with ``sparsity="sensitivity"``, ``sensitivity_images``
    training images drawn at random (by the recipe's seed; the split is sorted by class, so a
    slice off one end would be a single digit) score the scan and no training stage sees them:
    sparsity is chosen without the test split and without images the model has fit. Else (train, None)."""
    if isinstance(recipe.sparsity, str) and recipe.sparsity != "sensitivity":
        raise ValueError(f"Recipe.sparsity must be per-layer values or 'sensitivity', got {recipe.sparsity!r}")
    if recipe.sparsity != "sensitivity":
        return train, None
    n = recipe.sensitivity_images
    if not 0 < n < len(train[0]):
        raise ValueError(f"sensitivity_images must be in 1..{len(train[0]) - 1} (the training images), got {n}")
    held = np.zeros(len(train[0]), bool)
    held[np.random.default_rng(recipe.seed).choice(len(held), n, replace=False)] = True
    return (train[0][~held], train[1][~held]), (train[0][held], train[1][held])


DENSE_FIELDS = ("model", "model_args", "train_images", "seed", "batch", "dense_epochs", "dense_lr", "augment",
                "optimizer", "weight_decay")
PRUNE_FIELDS = DENSE_FIELDS + ("sparsity", "sensitivity_threshold", "sensitivity_overall", "sensitivity_images",
                               "prune_epochs", "prune_steps", "prune_lr")


def _cache_file(cache: Path | None, stage: str, recipe: Recipe, fields: tuple[str, ...], images: int) -> Path | None:
    """Where ``cache`` keeps the model after ``stage``, named by the recipe fields that decide it."""
    if cache is None:
        return None
    key = json.dumps({"images": images, **{k: getattr(recipe, k) for k in fields}}, sort_keys=True)
    return Path(cache) / f"{stage}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _save(obj, path: Path | None) -> None:
    """Written whole, then renamed: a parallel run never reads half a file."""
    import torch

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}")
        torch.save(obj, part)
        os.replace(part, path)


def run(recipe: Recipe, out: Path, quiet: bool = False, log: Callable[[str], None] = print,
        on_stage: Callable[[str, object], None] | None = None, cache: Path | None = None) -> dict:
    """Run the whole pipeline; ``on_stage(name, torch_model)`` sees the model after "pruned" and
    "quantized" (tests check the masks and codebooks there). ``cache``: a folder where dense and
    pruned models are kept by the recipe fields that decide them, so that sweeps over the later
    stages (``benchmarks/compression.py --ablation``) train each of them once. Returns the result
    dict (also written as OUT/MODEL.json)."""
    import torch

    from dcm import compress, zoo
    from dcm.converters import ConvertOptions, from_torch
    from dcm.compress.export import code_shared_tensors
    from dcm.compress.sensitivity import sparsity_from_scan
    from dcm.format.reader import read
    from dcm.format.stats import model_stats
    from dcm.format.writer import write

    t0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    train, test = mnist.load()
    if recipe.train_images is not None:
        train = (train[0][: recipe.train_images], train[1][: recipe.train_images])
    train, scan = _hold_out(train, recipe)
    model = zoo.MODELS[recipe.model](**recipe.model_args)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[1/4] dense baseline: {recipe.model}, {n_params:,} parameters, {len(train[0]):,} train / {len(test[0]):,} test images")
    cached = _cache_file(cache, "dense", recipe, DENSE_FIELDS, len(train[0]))
    if cached is not None and cached.exists():
        model.load_state_dict(torch.load(cached))
        model.eval()
    else:
        _train(model, train, recipe.dense_epochs, recipe.dense_lr, recipe.seed, "dense", recipe, quiet)
        _save(model.state_dict(), cached)
    err_dense = _torch_error(model, test)
    log(f"      test error {err_dense:.2%}")

    sparsity = recipe.sparsity
    cached = _cache_file(cache, "pruned", recipe, PRUNE_FIELDS, len(train[0]))
    if cached is not None and cached.exists():
        saved = torch.load(cached)
        model.load_state_dict(saved["weights"])
        sparsity = saved["sparsity"]
        log(f"[2/4] pruned to {sparsity}: the model from {cached}")
    else:
        if scan is not None:
            overall = recipe.sensitivity_overall
            sparsity, _ = sparsity_from_scan(model, lambda m: _torch_error(m, scan),
                                             None if overall else recipe.sensitivity_threshold, overall)
            log(f"      sensitivity scan on {len(scan[0]):,} held-out training images: "
                + (f"{overall:.1%} of all weights pruned" if overall else
                   f"at most {recipe.sensitivity_threshold:.1%} more error per layer"))
        log(f"[2/4] pruning with retraining to {sparsity} (gradual, {recipe.prune_steps} steps)")
        pruner = compress.Pruner(model, sparsity=sparsity, schedule=compress.Gradual(steps=recipe.prune_steps))
        _train(model, train, recipe.prune_epochs, recipe.prune_lr, recipe.seed + 1, "prune", recipe, quiet,
               on_epoch=lambda e: pruner.step() if e < recipe.prune_steps else None)
        pruner.finalize()
        _save({"weights": model.state_dict(), "sparsity": sparsity}, cached)
    if on_stage:
        on_stage("pruned", model)
    err_pruned = _torch_error(model, test)
    log(f"      test error {err_pruned:.2%}")

    log(f"[3/4] trained quantization: {recipe.bits} bits" + (f", size penalty {recipe.size_penalty}" if recipe.size_penalty else "")
        + (f", {recipe.other_bits}-bit biases" if recipe.other_bits else "") + ", centroid fine-tuning")
    quant = compress.share_weights(model, bits=recipe.bits, size_penalty=recipe.size_penalty,
                                   other_bits=recipe.other_bits)
    _train(model, train, recipe.quant_epochs, recipe.quant_lr, recipe.seed + 2, "quantize", recipe, quiet)
    quant.finalize()
    if on_stage:
        on_stage("quantized", model)
    err_quant = _torch_error(model, test)
    log(f"      test error {err_quant:.2%} (torch)")

    path = out / f"{recipe.model}.dcm"
    example = torch.from_numpy(test[0][:1])
    opts = ConvertOptions(index_bits=recipe.index_bits if recipe.index_bits == "auto" else {"conv": int(recipe.index_bits), "fc": int(recipe.index_bits)},
                          compact_graph=True)
    dcm_model = from_torch(model, example, options=opts, code_bits=quant.code_bits(), exporter=recipe.exporter)
    code_shared_tensors(dcm_model)
    write(path, dcm_model)
    err_file = file_error(path, test)
    size = path.stat().st_size
    log(f"[4/4] wrote {path} ({size:,} bytes); test error from the file (dcm runtime): {err_file:.2%}")
    stats = model_stats(read(path), size)
    result = {
        "model": recipe.model, "parameters": n_params, "float32_bytes": 4 * n_params, "dcm_bytes": size,
        "ratio": 4 * n_params / size, "error_dense": err_dense, "error_pruned": err_pruned,
        "error_quantized_torch": err_quant, "error_file": err_file, "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0, "sparsity": sparsity,
        "layers": layer_rows(dcm_model, stats), "recipe": asdict(recipe), "file": str(path),
    }
    (out / f"{recipe.model}.json").write_text(json.dumps(result, indent=2))
    return result


def layer_rows(model, stats: dict) -> list[dict]:
    """Per-layer rows read from the file: each coded weight with its bias ("fc1" = fc1.weight + fc1.bias),
    then the remaining float tensors (LayerNorm scales, positions...) as one "other" row."""
    rows, rest = [], []
    by_name = {t["name"]: t for t in stats["tensors"]}
    for t in stats["tensors"]:
        name = t["name"]
        if model.tensors[name].dtype != "float32" or (name.endswith(".bias") and name[:-5] + ".weight" in by_name):
            continue
        if t["encoding"] == "raw":
            rest.append(t)
            continue
        layer = name[:-7] if name.endswith(".weight") else name
        parts = [t] + ([by_name[layer + ".bias"]] if layer + ".bias" in by_name else [])
        rows.append(_row(layer, t, parts))
    if rest:
        rows.append(_row("other", None, rest))
    return rows


def _row(layer: str, weight: dict | None, parts: list[dict]) -> dict:
    size = sum(p["payload_bytes"] for p in parts)
    w = weight or {}
    return {"layer": layer, "weights": sum(p["elements"] for p in parts) if weight is None else w["elements"],
            "density": w.get("density", 1.0), "values": w["codebook_bytes"] // 4 if w.get("code_bits") else None,
            "bits_per_code": w.get("bits_per_code"), "index_bits": w.get("index_bits"),
            "bits_per_index": w.get("bits_per_index"), "bytes": size,
            "ratio": 4 * sum(p["elements"] for p in parts) / max(size, 1)}


def format_tables(r: dict) -> str:
    width = max([8] + [len(x["layer"]) + 2 for x in r["layers"]])
    lines = ["Table 1 (this run, real file):",
             f"{'network':<12}{'top-1 error':>12}{'compressed error':>18}{'parameters':>12}{'float32':>12}{'.dcm':>10}{'ratio':>8}",
             f"{r['model']:<12}{r['error_dense']:>12.2%}{r['error_file']:>18.2%}{r['parameters']:>12,}"
             f"{r['float32_bytes'] / 1024:>10.0f}KB{r['dcm_bytes'] / 1024:>8.1f}KB{r['ratio']:>7.1f}x",
             "", "Tables 2/3 (per layer, from the file):",
             f"{'layer':<{width}}{'#weights':>10}{'weights%':>10}{'values':>8}{'coded b/w':>10}{'index bits':>11}"
             f"{'coded b/i':>10}{'bytes':>9}{'ratio':>8}"]
    for x in r["layers"]:
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"{x['layer']:<{width}}{x['weights']:>10,}{x['density']:>10.1%}{x['values'] or '-':>8}"
                     f"{f(x['bits_per_code']):>10}{x['index_bits'] or '-':>11}{f(x['bits_per_index']):>10}"
                     f"{x['bytes']:>9,}{x['ratio']:>7.1f}x")
    cpu = f" ({r['cpu_seconds']:.0f} s CPU)" if "cpu_seconds" in r else ""
    lines.append(f"\n(error: standard split, {r['seconds']:.0f} s{cpu}; ratio = float32 size of all parameters / .dcm file size)")
    return "\n".join(lines)
