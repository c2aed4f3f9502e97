"""``dcm demo``: the paper's Table 1 row on MNIST, from a clean clone, measured from the real file.

dense baseline -> pruning with retraining (Zhu & Gupta gradual schedule) -> trained quantization
-> .dcm -> reload with dcm's own runtime (not torch) -> test error of the file.
"""
from __future__ import annotations

import json
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
    seed: int = 0
    batch: int = 64
    dense_epochs: int = 30
    dense_lr: float = 0.05
    prune_epochs: int = 30  # the first `prune_steps` of them raise sparsity, the rest retrain
    prune_steps: int = 10
    prune_lr: float = 0.02
    sparsity: dict[str, float] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=lambda: {"conv": 8, "fc": 5})
    quant_epochs: int = 8
    quant_lr: float = 0.002
    index_bits: str | int = "auto"


RECIPES = {
    "lenet300": Recipe(model="lenet300", sparsity={"fc1": 0.96, "fc2": 0.93, "fc3": 0.75}),
    "lenet5": Recipe(model="lenet5", dense_epochs=20, prune_epochs=24, prune_steps=8, quant_epochs=6,
                     sparsity={"conv1": 0.34, "conv2": 0.88, "fc1": 0.95, "fc2": 0.85}),
}


def _train(model, data, epochs: int, lr: float, batch: int, seed: int, desc: str, quiet: bool,
           on_epoch: Callable[[int], None] | None = None) -> None:
    import torch

    x, y = (torch.from_numpy(a) for a in data)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in bar(range(epochs), desc, enabled=not quiet):
        if on_epoch:
            on_epoch(epoch)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
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


def run(recipe: Recipe, out: Path, quiet: bool = False, log: Callable[[str], None] = print) -> dict:
    import torch

    from dcm import compress, zoo
    from dcm.converters import ConvertOptions, from_torch
    from dcm.format.reader import read
    from dcm.format.stats import model_stats

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    train, test = mnist.load()
    model = zoo.MODELS[recipe.model]()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[1/4] dense baseline: {recipe.model}, {n_params:,} parameters, {len(train[0]):,} train / {len(test[0]):,} test images")
    _train(model, train, recipe.dense_epochs, recipe.dense_lr, recipe.batch, recipe.seed, "dense", quiet)
    err_dense = _torch_error(model, test)
    log(f"      test error {err_dense:.2%}")

    log(f"[2/4] pruning with retraining to {recipe.sparsity} (gradual, {recipe.prune_steps} steps)")
    pruner = compress.Pruner(model, sparsity=recipe.sparsity, schedule=compress.Gradual(steps=recipe.prune_steps))
    _train(model, train, recipe.prune_epochs, recipe.prune_lr, recipe.batch, recipe.seed + 1, "prune", quiet,
           on_epoch=lambda e: pruner.step() if e < recipe.prune_steps else None)
    pruner.finalize()
    err_pruned = _torch_error(model, test)
    log(f"      test error {err_pruned:.2%}")

    log(f"[3/4] trained quantization: {recipe.bits} bits, centroid fine-tuning")
    quant = compress.share_weights(model, bits=recipe.bits)
    _train(model, train, recipe.quant_epochs, recipe.quant_lr, recipe.batch, recipe.seed + 2, "quantize", quiet)
    quant.finalize()
    err_quant = _torch_error(model, test)
    log(f"      test error {err_quant:.2%} (torch)")

    path = out / f"{recipe.model}.dcm"
    example = torch.from_numpy(test[0][:1])
    opts = ConvertOptions(index_bits=recipe.index_bits if recipe.index_bits == "auto" else {"conv": int(recipe.index_bits), "fc": int(recipe.index_bits)},
                          metadata={"recipe": json.dumps(asdict(recipe), sort_keys=True)})
    from_torch(model, example, path, options=opts, code_bits=quant.code_bits())
    err_file = file_error(path, test)
    size = path.stat().st_size
    log(f"[4/4] wrote {path} ({size:,} bytes); test error from the file (dcm runtime): {err_file:.2%}")
    stats = model_stats(read(path), size)
    result = {
        "model": recipe.model, "parameters": n_params, "float32_bytes": 4 * n_params, "dcm_bytes": size,
        "ratio": 4 * n_params / size, "error_dense": err_dense, "error_pruned": err_pruned,
        "error_quantized_torch": err_quant, "error_file": err_file, "seconds": time.perf_counter() - t0,
        "layers": _layer_rows(model, stats, quant), "recipe": asdict(recipe), "file": str(path),
    }
    (out / f"{recipe.model}.json").write_text(json.dumps(result, indent=2))
    return result


def _layer_rows(model, stats: dict, quant) -> list[dict]:
    from dcm.compress.layers import weight_layers

    by_name = {t["name"]: t for t in stats["tensors"]}
    rows = []
    for name, m in weight_layers(model).items():
        w = by_name.get(f"{name}.weight")
        b = by_name.get(f"{name}.bias")
        if w is None:
            continue
        size = w["payload_bytes"] + (b["payload_bytes"] if b else 0)
        rows.append({"layer": name, "weights": w["elements"], "density": w["density"],
                     "code_bits": quant.bits.get(name), "bits_per_code": w["bits_per_code"],
                     "index_bits": w["index_bits"], "bits_per_index": w["bits_per_index"],
                     "bytes": size, "ratio": 4 * (w["elements"] + (b["elements"] if b else 0)) / size})
    return rows


def format_tables(r: dict) -> str:
    lines = ["Table 1 (this run, real file):",
             f"{'network':<12}{'top-1 error':>12}{'compressed error':>18}{'parameters':>12}{'float32':>12}{'.dcm':>10}{'ratio':>8}",
             f"{r['model']:<12}{r['error_dense']:>12.2%}{r['error_file']:>18.2%}{r['parameters']:>12,}"
             f"{r['float32_bytes'] / 1024:>10.0f}KB{r['dcm_bytes'] / 1024:>8.1f}KB{r['ratio']:>7.1f}x",
             "", "Tables 2/3 (per layer, from the file):",
             f"{'layer':<8}{'#weights':>10}{'weights%':>10}{'code bits':>10}{'coded b/w':>10}{'index bits':>11}"
             f"{'coded b/i':>10}{'bytes':>9}{'ratio':>8}"]
    for x in r["layers"]:
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"{x['layer']:<8}{x['weights']:>10,}{x['density']:>10.1%}{x['code_bits'] or '-':>10}"
                     f"{f(x['bits_per_code']):>10}{x['index_bits'] or '-':>11}{f(x['bits_per_index']):>10}"
                     f"{x['bytes']:>9,}{x['ratio']:>7.1f}x")
    lines.append(f"\n(error: standard split, {r['seconds']:.0f} s; ratio = float32 size of all parameters / .dcm file size)")
    return "\n".join(lines)
