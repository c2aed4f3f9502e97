"""What the channels-last regions buy: the zoo's depthwise and grouped models with the ``channels_last`` pass and
without it (its kernels switched off, so the session keeps every convolution NCHW), against onnxruntime.

    python -m benchmarks.channels_last [--models mobilenet_v2,efficientnet_b0,convnext_atto,regnetx_400mf] [--docs]

Each model dense (seed 0, as ``benchmarks.zoo`` builds it), batch 1 and 8, 1 and 2 threads; the three
runtimes take turns in blocks of calls (``timeit``'s median), so none runs beside another's spinning
threads, for ROUNDS rounds; each keeps its best round. Writes benchmarks/results/channels_last.json; ``--docs`` refreshes the table in
docs/channels-last.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import compiled_off, onnxruntime_session, replace_between, save, timeit
from benchmarks.zoo import example, exported, model_names, thread_counts
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession

DOCS = Path(__file__).parent.parent / "docs" / "channels-last.md"
MODELS = ("mobilenet_v2", "efficientnet_b0", "convnext_atto", "regnetx_400mf")
START, END = "<!-- channels-last table: start -->", "<!-- channels-last table: end -->"
ROUNDS = 3


def measure(name: str, batches: tuple[int, ...], threads: tuple[int, ...]) -> list[dict]:
    _, names, onnx_bytes = exported(name, pruned=False)
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    rows = []
    for batch in batches:
        feeds = example(name, batch, names)[1]
        for n in threads:
            nhwc = InferenceSession(model, threads=n, batch_hint=batch)
            with compiled_off(["depthwise_nhwc"]):  # the pass needs this kernel: every Conv stays NCHW
                nchw = InferenceSession(model, threads=n, batch_hint=batch)
            regions = sum(d["op"].startswith("dcm.Nhwc") for d in nhwc.describe())
            ort = onnxruntime_session(onnx_bytes, n)
            times = {}
            for _ in range(ROUNDS):  # the best round's median: a stall in one round (the pool then backs off
                for label, run in (("nchw", nchw), ("nhwc", nhwc), ("onnxruntime", ort)):  # for a while) passes
                    run.run(None, feeds)
                    t = 1e3 * timeit(lambda: run.run(None, feeds), warm=True)
                    times[label] = min(times.get(label, t), t)
            rows.append({"model": name, "batch": batch, "threads": n, "channels_last_nodes": regions,
                         **{f"{k}_ms": v for k, v in times.items()},
                         "nhwc_vs_nchw": times["nhwc"] / times["nchw"],
                         "nchw_vs_onnxruntime": times["nchw"] / times["onnxruntime"],
                         "nhwc_vs_onnxruntime": times["nhwc"] / times["onnxruntime"]})
            print(f"{name} batch {batch} threads {n}: NCHW {times['nchw']:.2f} ms, channels-last {times['nhwc']:.2f},"
                  f" onnxruntime {times['onnxruntime']:.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | threads | channels-last nodes | NCHW ms | channels-last ms | onnxruntime ms | "
             "channels-last / NCHW | NCHW / ort | channels-last / ort |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['threads']} | {r['channels_last_nodes']} | {r['nchw_ms']:.2f} | "
              f"{r['nhwc_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['nhwc_vs_nchw']:.2f} | "
              f"{r['nchw_vs_onnxruntime']:.2f} | {r['nhwc_vs_onnxruntime']:.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models")
    ap.add_argument("--docs", action="store_true", help="refresh the table in docs/channels-last.md")
    args = ap.parse_args()
    rows = [r for name in model_names(ap, args.models) for r in measure(name, (1, 8), thread_counts())]
    path = save("channels_last", {"rows": rows})
    text = table(rows)
    print(text, f"\nwrote {path}", sep="\n")
    if args.docs:
        replace_between(DOCS, START, END, text)


if __name__ == "__main__":
    main()
