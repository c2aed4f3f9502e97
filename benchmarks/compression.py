"""Table 1 rows of every `dcm demo` model over several seeds, the per-technique ablation, and the docs page.

    python benchmarks/compression.py [--models lenet300 lenet5 vit lstm] [--seeds 0 1 2]
    python benchmarks/compression.py --ablation [--seeds 0 1 2]       # LeNet-300-100, one technique at a time
    python benchmarks/compression.py --docs docs/compression.md        # render the page from the JSON only

Each run is `dcm demo`'s pipeline: the error is measured by running the written .dcm with dcm's
runtime on the standard split's 5,000 test images, and the ratio is float32 bytes of all
parameters / the whole file. Results go to benchmarks/results/compression.json (one row per model:
the first seed's full result, the mean and worst over the seeds, and each seed's figures) and
compression_ablation.json; --docs renders docs/compression.md from those files (pass
--out docs/data to render from the committed copies).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dcm import demo

RESULTS = Path(__file__).parent / "results"
# Issue 21's bars: the ratio to reach, and the error to stay under (absolute, or dense + margin).
TARGETS = {
    "lenet300": {"ratio": 64.0, "error": 0.0258, "dense": 0.0248},
    "lenet5": {"ratio": 100.0, "error": 0.0110},
    "vit": {"ratio": 20.0, "over_dense": 0.003},
    "lstm": {"ratio": 20.0, "over_dense": 0.003},
}
PAPER = {"lenet300": "40x (Deep Compression), 64x (soft weight-sharing)", "lenet5": "39x (Deep Compression), 162x (soft weight-sharing)"}

# Cumulative steps on LeNet-300-100, from the Deep Compression paper's own settings for it (its
# Table 2: 8/9/26% of the weights kept, 6-bit codebooks) to RECIPES["lenet300"]: each row adds one
# technique to the row above (main() checks that the last row is the demo's recipe).
ABLATION = [
    ("Deep Compression's settings (92/91/74% pruned, 6-bit fc codebooks, float32 biases)",
     dict(augment=0, sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, bits={"fc": 6}, size_penalty=0.0, other_bits=None)),
    ("+ stronger dense recipe (random 2-pixel shifts in every stage)", dict(augment=2)),
    ("+ harder per-layer pruning, hand-picked (98/95/80%)", dict(sparsity={"fc1": 0.98, "fc2": 0.95, "fc3": 0.8})),
    ("+ 4-bit fc codebooks", dict(bits={"fc": 4})),
    ("+ entropy-constrained weight sharing (size penalty 0.03)", dict(size_penalty=0.03)),
    ("+ shared 3-bit biases, coded", dict(other_bits=3)),
]
# Rows that change one choice of the last row instead of adding to it.
VARIANTS = [
    ("last row, per-layer sparsity from a sensitivity scan instead (at most 2 pp one-shot error rise per layer)",
     dict(sparsity="sensitivity", sensitivity_threshold=0.02)),
    ("last row, per-layer sparsity from a sensitivity scan instead, at the hand-picked overall sparsity (97.6%)",
     dict(sparsity="sensitivity", sensitivity_overall=0.976)),
]


BRIEF = ("error_dense", "error_pruned", "error_quantized_torch", "error_file", "dcm_bytes", "ratio", "seconds")


def run_recipe(recipe: demo.Recipe, out: Path, cache: Path | None = None) -> dict:
    return demo.run(recipe, out, quiet=True, log=lambda line: None, cache=cache)


def settings(recipe: demo.Recipe | dict) -> str:
    """A recipe's identity: its fields that differ from ``Recipe()``'s, as JSON. A field added to
    Recipe later, at its default, leaves the identity of earlier runs as it was."""
    norm = lambda r: json.loads(json.dumps(asdict(r) if isinstance(r, demo.Recipe) else r))  # noqa: E731
    defaults = norm(demo.Recipe())
    return json.dumps({k: v for k, v in norm(recipe).items() if k not in defaults or defaults[k] != v}, sort_keys=True)


def recipe_key(recipe: demo.Recipe) -> str:
    """A folder name for one recipe's run: the same recipe always lands in the same folder."""
    return f"{recipe.model}-{hashlib.sha256(settings(recipe).encode()).hexdigest()[:16]}"


def finished_runs(folder: Path) -> dict[str, dict]:
    """Every result below ``folder`` (one run per subfolder), by :func:`settings` of its recipe."""
    runs = (json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json")))
    return {settings(r["recipe"]): r for r in runs}


def with_listed_tables(model):
    """``model`` (a dcm.format Model, changed in place and returned) with its Huffman tables in
    format 1.0's listed form (every symbol's length) instead of the compact form of spec 6.2, the
    weights unchanged: its size against the file's is what the compact tables save, without
    training anything again."""
    from dcm.encoder.codec import decode_tensor, encode_tensor, parse
    from dcm.format import constants as C

    for name, rec in model.tensors.items():
        if rec.encoding not in C.COMPACT_TABLE_ENCODINGS:
            continue
        p, w = parse(rec), decode_tensor(rec)
        model.tensors[name] = encode_tensor(
            w, mask=None if rec.encoding in C.SPARSE_ENCODINGS else np.ones(w.shape, bool), code_bits=p.code_bits or 1,
            index_bits="auto", codebook=p.codebook, quantize=p.codebook is not None, name=name,
            block_log2=p.block_log2, compact_tables=False)
    return model


def listed_tables_bytes(path: Path) -> int:
    """The size of the .dcm file at ``path`` rewritten by :func:`with_listed_tables`."""
    from dcm.format.reader import read
    from dcm.format.writer import to_bytes

    return len(to_bytes(with_listed_tables(read(path))))


def _one_thread() -> None:
    """Parallel jobs each get one torch thread: two jobs of two threads on two cores only thrash."""
    import torch

    torch.set_num_threads(1)


def run_all(recipes: list[demo.Recipe], outs: list[Path], jobs: int, cache: Path | None = None) -> list[dict]:
    """Run independent recipes, ``jobs`` at a time (each run is deterministic, so order does not matter)."""
    if jobs <= 1:
        return [run_recipe(r, o, cache) for r, o in zip(recipes, outs)]
    with ProcessPoolExecutor(jobs, initializer=_one_thread) as pool:
        return list(pool.map(run_recipe, recipes, outs, [cache] * len(recipes)))


def summarize(model: str, runs: list[dict]) -> dict:
    errs = [r["error_file"] for r in runs]
    ratios = [r["ratio"] for r in runs]
    dense = [r["error_dense"] for r in runs]
    s = {"model": model, "seeds": [r["recipe"]["seed"] for r in runs],
         "error_dense_mean": sum(dense) / len(dense), "error_dense_worst": max(dense),
         "error_file_mean": sum(errs) / len(errs), "error_file_worst": max(errs),
         "ratio_mean": sum(ratios) / len(ratios), "ratio_worst": min(ratios),
         "seconds_mean": sum(r["seconds"] for r in runs) / len(runs)}
    t = TARGETS.get(model, {})
    bar = s["ratio_worst"] >= t.get("ratio", 0)
    if "error" in t:
        bar &= s["error_file_worst"] <= t["error"]
    if "dense" in t:
        bar &= s["error_dense_worst"] <= t["dense"]
    if "over_dense" in t:
        bar &= all(r["error_file"] <= r["error_dense"] + t["over_dense"] for r in runs)
    s["meets_target"] = bool(bar)
    return s


def _machine() -> dict:
    """Where and under what load the runs' seconds were measured (a shared machine slows them)."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5", "vit", "lstm"], choices=sorted(demo.RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--ablation", action="store_true", help="LeNet-300-100, adding one technique per row")
    ap.add_argument("--collect", action="store_true", help="with --ablation: run nothing, summarize the runs done")
    ap.add_argument("--docs", metavar="PATH", help="only render the markdown page from the saved JSON")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    out = Path(args.out)
    if args.docs:
        Path(args.docs).write_text(render(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        ablation(args.seeds, args.jobs, out, args.collect)
        return
    path = out / "compression.json"
    for name in args.models:
        recipes = [replace(demo.RECIPES[name], seed=seed) for seed in args.seeds]
        runs = run_all(recipes, [out / f"{name}-seed{r.seed}" for r in recipes], args.jobs)
        for r in runs:
            print(demo.format_tables(r))
        s = summarize(name, runs)
        # read just before writing: rows of other models written meanwhile (another run) are kept
        saved = {r["model"]: r for r in json.loads(path.read_text())} if path.exists() else {}
        saved[name] = {**runs[0], **s, "machine": _machine(),
                       "runs": [{k: r[k] for k in BRIEF} | {"seed": r["recipe"]["seed"]} for r in runs]}
        print(f"\n{name}: file error mean {s['error_file_mean']:.2%} worst {s['error_file_worst']:.2%}; "
              f"ratio mean {s['ratio_mean']:.1f}x worst {s['ratio_worst']:.1f}x; target met: {s['meets_target']}")
        path.write_text(json.dumps(list(saved.values()), indent=2))


def ablation_rows() -> list[tuple[str, dict, demo.Recipe]]:
    """(label, change, recipe) of every ablation row: ABLATION's chain, then VARIANTS of its last row."""
    rows, recipe = [], demo.RECIPES["lenet300"]
    for label, change in ABLATION:
        recipe = replace(recipe, **change)
        rows.append((label, change, recipe))
    if recipe != demo.RECIPES["lenet300"]:
        raise ValueError("ABLATION's last row differs from RECIPES['lenet300']: the table would not end at the demo")
    return rows + [(label, change, replace(recipe, **change)) for label, change in VARIANTS]


def ablation(seeds: list[int], jobs: int, out: Path, collect: bool = False) -> None:
    """Run ABLATION's chain and VARIANTS over ``seeds`` (runs already in OUT/ablation are reused,
    so an interrupted sweep resumes; delete that folder after changing the pipeline's code;
    ``collect``: run nothing, summarize the runs finished so far) and write
    OUT/compression_ablation.json."""
    chain = ablation_rows()
    folder = out / "ablation"
    done = finished_runs(folder)
    steps = [replace(r, seed=s) for s in seeds for _, _, r in chain if settings(replace(r, seed=s)) not in done]
    if steps and not collect:
        # Seed by seed (a run stopped early leaves whole tables of fewer seeds); within a seed, rows
        # that train their own dense model first, then those that train their own pruned model, then
        # those that only change a later stage: these find the models they start from in OUT/cache
        # (two runs in parallel may still train one twice).
        dense, pruned = ([json.dumps([getattr(r, f) for f in fields]) for r in steps]
                         for fields in (demo.DENSE_FIELDS, demo.PRUNE_FIELDS))
        steps = [steps[i] for i in sorted(range(len(steps)), key=lambda i: (
            seeds.index(steps[i].seed), pruned[i] in pruned[:i], dense[i] in dense[:i]))]
        run_all(steps, [folder / recipe_key(r) for r in steps], jobs, out / "cache")
        done = finished_runs(folder)
    rows = []
    for label, change, recipe in chain:
        runs = [done[k] for s in seeds if (k := settings(replace(recipe, seed=s))) in done]
        if not runs:
            continue
        rows.append({"step": label, "change": change, "variant": label in dict(VARIANTS),
                     **summarize("lenet300", runs), "bytes_mean": float(np.mean([r["dcm_bytes"] for r in runs])),
                     "listed_tables_bytes_mean": float(np.mean([listed_tables_bytes(Path(r["file"])) for r in runs])),
                     "sparsity": [r["sparsity"] for r in runs]})
        print(f"{label:<66}{rows[-1]['error_file_mean']:>8.2%}{rows[-1]['error_file_worst']:>8.2%}"
              f"{rows[-1]['ratio_mean']:>8.1f}x  seeds {rows[-1]['seeds']}")
    (out / "compression_ablation.json").write_text(json.dumps({"machine": _machine(), "seeds": seeds,
                                                                "rows": rows}, indent=2))


def render(out: Path) -> str:
    """docs/compression.md, from compression.json and compression_ablation.json."""
    lines = [
        "# Compression results",
        "",
        "Generated by `python benchmarks/compression.py --docs docs/compression.md --out docs/data` from",
        "the JSON `benchmarks/compression.py` writes (copied to `docs/data/`); every figure comes from a",
        "written `.dcm` file. The error is",
        "measured by running that file with dcm's runtime on the standard split's 5,000 test images",
        "(`dcm/mnist.py`); the ratio is float32 bytes of all parameters / the whole file (graph, tables",
        "and padding included), the accounting of the Deep Compression paper.",
        "",
        "## The techniques, and where they live",
        "",
        "- **Stronger dense recipe**: every training stage sees each image moved by a random shift of up",
        "  to 2 pixels (`dcm.demo.shift`, `Recipe.augment`). The bundled split has 10,000 training images,",
        "  which LeNet-300-100 overfits; the shifts lower its dense error and leave room to prune harder.",
        "- **Per-layer sparsity** (`Recipe.sparsity`, `dcm.compress.Pruner`): the first layer, which holds",
        "  most weights, is pruned hardest. The recipes' values are hand-picked; `Recipe(sparsity=\"sensitivity\")`",
        "  derives them instead (`dcm.compress.sensitivity.sparsity_from_scan`): each layer alone is pruned",
        "  one-shot to each sparsity of a grid, and gets the largest whose error rise on held-out *training*",
        "  images (`sensitivity_images` of them, drawn by the seed and kept out of every training stage)",
        "  stays within `sensitivity_threshold`; or, with `sensitivity_overall`, within the one threshold",
        "  that prunes that share of all the weights (a budget spent where the scan says it hurts least).",
        "- **Per-layer bit widths** (`Recipe.bits`, per kind or per layer name, `dcm.compress.share_weights`).",
        "- **Entropy-constrained weight sharing** (`share_weights(size_penalty=...)`,",
        "  `dcm.encoder.kmeans.entropy_constrained`): k-means that minimizes distortion + lambda x",
        "  coded bits, so the clusters Huffman coding makes cheap grow and rare ones vanish; centroid",
        "  fine-tuning then recovers the accuracy.",
        "- **Coded biases** (`share_weights(other_bits=...)`, `dcm.compress.export.code_shared_tensors`):",
        "  biases (and LayerNorm scales, position embeddings) are shared over 2^b values and stored as",
        "  codebook + Huffman codes, exactly, instead of float32.",
        "- **Short graph names** (`ConvertOptions(compact_graph=True)`, `dcm.converters.compact`):",
        "  intermediate values get short names and default-valued attributes are dropped; model inputs,",
        "  outputs and tensors keep their names.",
        "- **Compact Huffman tables** (format 1.1, `dcm/encoder`), used by every file written.",
        "",
        "`dcm.compress.Pruner` and `share_weights` find every compressible weight",
        "(`dcm.compress.layers.weight_layers`): Linear and Conv weights, Embedding tables, the",
        "`weight_ih_l*`/`weight_hh_l*` matrices of LSTM/GRU/RNN, MultiheadAttention's packed",
        "`in_proj_weight` (its `out_proj` is a Linear) and transposed-weight linear layers (Hugging Face's",
        "`Conv1D`). Settings name a weight (`\"lstm.weight_hh_l0\"`), its module (`\"lstm\"`) or its kind",
        "(`\"conv\"`, `\"fc\"`). `tests/compress/test_layer_kinds.py` checks, per kind, that masks hold",
        "through optimizer steps, that shared weights hold at most 2^bits values after fine-tuning, and",
        "that the converted file reproduces the torch model.",
        "",
    ]
    path = out / "compression.json"
    if path.exists():
        data = {r["model"]: r for r in json.loads(path.read_text())}
        lines += ["## Table 1 rows (`dcm demo` recipes)", "",
                  "| model | seeds | dense error (mean / worst) | file error (mean / worst) | ratio (mean / worst) | target | met | s / run |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in data.items():
            lines.append(f"| {name} | {', '.join(map(str, s['seeds']))} | {s['error_dense_mean']:.2%} / "
                         f"{s['error_dense_worst']:.2%} | {s['error_file_mean']:.2%} / {s['error_file_worst']:.2%} | "
                         f"{s['ratio_mean']:.1f}x / {s['ratio_worst']:.1f}x | {_target(name)} | "
                         f"{'yes' if s['meets_target'] else 'no'} | {s['seconds_mean']:.0f} |")
        lines += ["", f"Published: LeNet-300-100 {PAPER['lenet300']}; LeNet-5 {PAPER['lenet5']}.", ""]
        for name, r in data.items():
            lines += [f"### {name}, seed {r['recipe']['seed']}: per layer, from the file", "", "```text",
                      demo.format_tables(r), "```", "", "| seed | dense error | file error | bytes | ratio | s |",
                      "|---|---|---|---|---|---|",
                      *(f"| {x['seed']} | {x['error_dense']:.2%} | {x['error_file']:.2%} | {x['dcm_bytes']:,} | "
                        f"{x['ratio']:.1f}x | {x['seconds']:.0f} |" for x in r["runs"]),
                      "", f"Recipe: `{json.dumps(r['recipe'], sort_keys=True)}`; machine: {r['machine']}.", ""]
    path = out / "compression_ablation.json"
    if not path.exists():
        lines += ["The controlled per-technique ablation, every technique added one at a time over three seeds, is",
                  "`python benchmarks/compression.py --ablation --seeds 0 1 2 --jobs 2`; its results are not in",
                  "`docs/data/` yet, so this page shows the single-seed exploration runs below instead.", ""]
    else:
        data = json.loads(path.read_text())
        lines += ["## What each technique buys (LeNet-300-100)", "",
                  "From `python benchmarks/compression.py --ablation --seeds 0 1 2 --jobs 2`. Each row of the chain",
                  "adds one change to the row above, from the Deep Compression paper's own settings for",
                  "LeNet-300-100 (its Table 2) to `RECIPES[\"lenet300\"]`, the demo's recipe (the chain's last row);",
                  "a *variant* row changes one choice of that last row instead. Every row chooses each layer's",
                  "index width by coded size and writes compact Huffman tables; the last column is the mean size",
                  "of the same files with format 1.0's listed tables (`with_listed_tables`), what the compact",
                  f"tables buy at each step. Seeds asked: {', '.join(map(str, data['seeds']))}; machine: {data['machine']}.", "",
                  "| step | seeds | dense error (mean) | file error (mean / worst) | file bytes (mean) | ratio (mean / worst) | bytes, listed tables (mean) |",
                  "|---|---|---|---|---|---|---|"]
        for row in data["rows"]:
            lines.append(f"| {'*variant*: ' if row['variant'] else ''}{row['step']} | {', '.join(map(str, row['seeds']))} | "
                         f"{row['error_dense_mean']:.2%} | {row['error_file_mean']:.2%} / {row['error_file_worst']:.2%} | "
                         f"{row['bytes_mean']:,.0f} | {row['ratio_mean']:.1f}x / {row['ratio_worst']:.1f}x | "
                         f"{row['listed_tables_bytes_mean']:,.0f} |")
        lines.append("")
        for row in data["rows"]:
            if row["change"].get("sparsity") == "sensitivity":
                lines += [f"Sparsity the scan chose ({row['step']}), per seed:", "",
                          *(f"- seed {seed}: {json.dumps(sp)}" for seed, sp in zip(row["seeds"], row["sparsity"])), ""]
    path = out / "compression_exploration.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += ["## Exploration runs (LeNet-300-100, one seed)", "", data["note"], "",
                  f"Each row: `{data['command']}`.", "",
                  "| change | dense error | pruned error | file error | file bytes | ratio | overrides |",
                  "|---|---|---|---|---|---|---|"]
        for row in data["rows"]:
            lines.append(f"| {row['label']} | {row['error_dense']:.2%} | {row['error_pruned']:.2%} | "
                         f"{row['error_file']:.2%} | {row['dcm_bytes']:,} | {row['ratio']:.1f}x | "
                         f"`{json.dumps(row['overrides']) if isinstance(row['overrides'], dict) else row['overrides']}` |")
        lines.append("")
    return "\n".join(lines)


def _target(name: str) -> str:
    t = TARGETS.get(name, {})
    parts = [f">= {t['ratio']:.0f}x"] if "ratio" in t else []
    if "error" in t:
        parts.append(f"error <= {t['error']:.2%}")
    if "dense" in t:
        parts.append(f"dense <= {t['dense']:.2%}")
    if "over_dense" in t:
        parts.append(f"error <= dense + {100 * t['over_dense']:.1f} pp")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
