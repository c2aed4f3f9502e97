"""The ``dcm`` command line. Errors are one line on stderr (``--debug`` for a traceback).

Exit codes: 0 success; 1 the file is invalid (validate) or outputs differ (verify); 2 bad input,
unreadable file, unwritable output or usage error; 130 interrupted (Ctrl-C); 141 the output pipe
was closed early (``dcm inspect --json F | head``), silently, as a Unix tool killed by SIGPIPE.
Tables: add --json for machine-readable output. Progress bars show on a terminal only; --quiet
turns them off.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from dcm.errors import DcmError
from dcm.format import constants as C
from dcm.format.writer import atomic_write_bytes
from dcm.names import KINDS
from dcm.progress import bar

EXIT_OK, EXIT_INVALID, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141


class CliError(Exception):
    """A user-facing failure that maps to one stderr line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``dcm convert: error: ...``) and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low: float, high: float | None = None, what: str = ""):
    """An argparse type: ``kind`` (int or float) in [low, high], finite; the message says the range."""
    span = f"at least {low:g}" if high is None else f"in {low:g}..{high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'} "
                                             f"{what or span}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what or span}")
        return value
    return parse


def _fraction(text: str) -> float:
    """A pruning fraction: the share of a layer's weights set to zero, 0 <= s < 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a sparsity is a fraction in [0, 1), "
                                         "e.g. 0.9 prunes 90% of the weights)") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"sparsity {text} is out of range: a fraction in [0, 1), "
                                         "e.g. 0.9 prunes 90% of the weights")
    return value


def _sparsity_arg(text: str) -> tuple[str | None, float]:
    """``0.9`` -> every weight layer; ``NAME=0.9`` -> a layer (module path, node or tensor name) or
    a kind (conv, fc)."""
    name, _, value = text.rpartition("=")
    if _ and not name:
        raise argparse.ArgumentTypeError(f"{text!r}: a layer name must come before '='")
    return (name or None), _fraction(value)


def _bits_arg(allow_auto: bool):
    """``8`` -> every layer; ``conv=8,fc=5`` or ``fc1=4`` -> per kind or layer; ``auto`` for index bits."""
    width = _number(int, C.MIN_BITS, C.MAX_BITS)

    def parse(text: str) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        for part in text.split(","):
            name, _, value = part.strip().rpartition("=")
            if _ and not name:
                raise argparse.ArgumentTypeError(f"{part!r}: a layer name must come before '='")
            bits = value if allow_auto and value == "auto" else width(value)
            out.update({name: bits} if name else dict.fromkeys(KINDS, bits))
        return out
    return parse


def _sparsity(values: list[tuple[str | None, float]] | None):
    """The --sparsity arguments as ConvertOptions wants them: one fraction, or {name or kind: fraction}."""
    if not values:
        return None
    seen: dict[str | None, float] = {}
    for name, s in values:
        if seen.setdefault(name, s) != s:
            raise CliError(f"--sparsity given twice for {repr(name) if name else 'every layer'}: "
                           f"{seen[name]:g} and {s:g}")
    glob = next((s for name, s in reversed(values) if name is None), None)
    per = {name: s for name, s in values if name is not None}
    if not per:
        return glob
    if glob is not None:
        for kind in KINDS:
            per.setdefault(kind, glob)
    return per


def _load_inputs(specs: list[str], sess) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for i, spec in enumerate(specs):
        name, path = spec.split("=", 1) if "=" in spec else (names[i] if i < len(names) else None, spec)
        if name is None:
            raise CliError(f"more inputs given than the model has ({names})")
        feeds[name] = _load_array_file(path, b"\x93NUMPY", ".npy file (written by numpy.save)")
    return feeds


def _load_array_file(path: str, magic: bytes, kind: str):
    """np.load without pickles, with messages that say what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if head != magic:
        raise CliError(f"{path} is not a {kind}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def _npz_inputs(path: str | None, sess, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    if path:
        with _load_array_file(path, b"PK", ".npz file (written by numpy.savez)") as z:
            try:
                data = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot read {path}: {exc}") from None
        names = [i.name for i in sess.get_inputs()]
        if set(names) <= set(data):
            return {n: data[n] for n in names}
        if len(names) == 1 and len(data) == 1:
            return {names[0]: next(iter(data.values()))}
        raise CliError(f"{path} holds {sorted(data)}, the model's inputs are {names}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape).astype(i.type[7:-1])
    return feeds


def cmd_validate(args) -> int:
    from dcm.format import validate

    worst, report = EXIT_OK, []
    for path in args.files:
        problems = validate(path)
        unreadable = len(problems) == 1 and problems[0].rule is None and problems[0].offset is None
        if problems:
            worst = max(worst, EXIT_ERROR if unreadable else EXIT_INVALID)
        report.append({"file": path, "valid": not problems, "readable": not unreadable,
                       "problems": [{"rule": p.rule, "offset": p.offset, "message": str(p)} for p in problems]})
        if args.json:
            continue
        if not problems:
            print(f"{path}: OK")
        for p in problems:
            print(str(p) if unreadable else f"{path}: {p}")  # an unreadable file's message names it
    if args.json:
        print(json.dumps(report, indent=2))
    return worst


def cmd_inspect(args) -> int:
    from dcm.format.reader import load_bytes, parse
    from dcm.format.stats import format_paper_table, format_table, model_stats, paper_rows, section_sizes

    data = load_bytes(args.file)
    model = parse(data)
    stats = model_stats(model, len(data))
    stats["sections"] = section_sizes(data)
    stats["metadata"] = model.metadata
    if args.kernels:
        from dcm.runtime import InferenceSession

        stats["kernels"] = InferenceSession(model, batch_hint=args.batch, progress=_progress(args)).describe()
    if args.plot:
        from dcm.plot import plot_file

        try:
            plot_file(model, stats, args.plot)
        except OSError as exc:
            raise CliError(f"cannot write {args.plot}: {exc.strerror}") from None
    if args.paper:
        stats["paper"] = paper_rows(stats)
    if args.json:
        print(json.dumps(stats, indent=2))
        return EXIT_OK
    if args.paper:
        print(format_paper_table(stats))
        return EXIT_OK
    print(f"{args.file}: opset {model.opset}, {len(model.nodes)} nodes, {len(model.tensors)} tensors")
    for k, v in model.metadata.items():
        print(f"  {k}: {v if len(v) <= METADATA_WIDTH else v[:METADATA_WIDTH - 1] + '…'}")
    print(format_table(stats))
    if args.kernels:
        print("\nkernels (batch hint %d):" % args.batch)
        layers = [k for k in stats["kernels"] if "kernel" in k or "folded_into" in k]
        w = max([len(k["name"]) for k in layers] + [4]) + 2
        wo = max([len(k["op"]) for k in layers] + [6]) + 2
        for k in layers:
            if "kernel" not in k:  # removed by a load-time graph rewrite
                print(f"  {k['name']:<{w}}{k['op']:<{wo}}folded into {k['folded_into']}")
                continue
            density = f"density {k['density']:.1%}" if "density" in k else ""
            print(f"  {k['name']:<{w}}{k['op']:<{wo}}{k['kernel']:<10}{density}".rstrip())
        shape_nodes = sum(1 for k in stats["kernels"] if k.get("shape_subgraph"))
        if shape_nodes:
            print(f"  {shape_nodes} nodes of shape arithmetic run once per input shape (the shape subgraph)")
    return EXIT_OK


METADATA_WIDTH = 200  # a metadata value longer than this (a JSON recipe) is cut, with an ellipsis


def cmd_run(args) -> int:
    from dcm.runtime import InferenceSession

    sess = InferenceSession(args.model, device=args.device, progress=_progress(args))
    feeds = _load_inputs(args.input, sess)
    outputs = sess.run(None, feeds)
    out_dir = Path(args.output)
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for meta, value in zip(sess.get_outputs(), outputs):
            target = out_dir / f"{meta.name.replace('/', '_')}.npy"
            buf = io.BytesIO()
            np.save(buf, value)
            atomic_write_bytes(target, buf.getvalue())
            written.append({"output": meta.name, "shape": list(value.shape), "dtype": str(value.dtype),
                            "file": str(target)})
    except OSError as exc:
        raise CliError(f"cannot write outputs to {out_dir}: {exc.strerror}") from None
    if args.json:
        print(json.dumps(written, indent=2))
    else:
        for w in written:
            print(f"{w['output']}: shape {w['shape']} {w['dtype']} -> {w['file']}")
    return EXIT_OK


def _progress(args) -> bool | None:
    """False with --quiet; otherwise let the session decide (a terminal and a large file)."""
    return False if args.quiet else None


def cmd_convert(args) -> int:
    import warnings

    from dcm.converters import ConvertOptions, from_onnx
    from dcm.format.stats import format_table, model_stats
    from dcm.format.writer import to_bytes, write

    if args.exact and args.code_bits:
        raise CliError("--exact stores float32 values, without a codebook: drop --code-bits, or --exact")
    defaults = ConvertOptions()
    opts = ConvertOptions(exact=args.exact, sparsity=_sparsity(args.sparsity),
                          code_bits={**defaults.code_bits, **(args.code_bits or {})},
                          index_bits={**defaults.index_bits, **(args.index_bits or {})},
                          compact_graph=args.compact_graph)
    progress = None if args.quiet else (lambda names: bar(names, "encode"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = from_onnx(args.model, opts, progress=progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    out = args.output or str(Path(args.model).with_suffix(".dcm"))
    try:
        write(out, model)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    size = Path(out).stat().st_size
    if args.check:
        print(_drift(args.model, out, args.check))
    if not args.quiet:
        stats = model_stats(model, len(to_bytes(model)))
        print(json.dumps(stats, indent=2) if args.json else format_table(stats))
    print(f"wrote {out} ({size:,} bytes)", file=sys.stderr)
    return EXIT_OK


def _drift(onnx_path: str, dcm_path: str, data: str) -> str:
    from dcm.runtime import InferenceSession

    sess = InferenceSession(dcm_path, progress=False)
    feeds = _npz_inputs(data, sess)
    got = sess.run(None, feeds)  # first: a feed of the wrong shape is named by dcm, not onnxruntime
    rows = _compare(sess.get_outputs(), got, _onnx_session(onnx_path).run(None, feeds))
    return "\n".join(f"drift {r['output']}: max abs {r['max_abs']:.3g}, max rel {r['max_rel']:.3g}"
                     + (f", top-1 agreement {r['top1_agreement']:.2%}" if "top1_agreement" in r else "")
                     for r in rows)


def _onnx_session(model):
    """onnxruntime on a path or serialized ONNX model; a file it cannot load is a one-line error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, one per failure kind
        where = model if isinstance(model, str) else "the exported model"
        raise CliError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from None


def _compare(outputs: list, got: list, ref: list, rtol: float = 0.0, atol: float = 0.0) -> list[dict]:
    """Per output: max abs and rel difference of dcm's ``got`` against ``ref``, whether they are
    close (numpy.allclose with rtol/atol), and top-1 agreement for [batch, classes] outputs."""
    rows = []
    for meta, a, b in zip(outputs, got, ref):
        if a.shape != np.shape(b):
            raise CliError(f"output {meta.name!r}: dcm gives shape {list(a.shape)}, the reference "
                           f"{list(np.shape(b))}")
        diff = np.abs(a.astype(np.float64) - b)
        row = {"output": meta.name, "max_abs": float(diff.max()) if diff.size else 0.0,
               "max_rel": float((diff / np.maximum(np.abs(b), 1e-6)).max()) if diff.size else 0.0,
               "ok": bool(np.allclose(a, b, rtol=rtol, atol=atol))}
        if a.ndim == 2 and a.shape[1] > 1 and a.shape[0]:
            row["top1_agreement"] = float((a.argmax(1) == np.asarray(b).argmax(1)).mean())
        rows.append(row)
    return rows


def cmd_export(args) -> int:
    from dcm.converters import export_onnx
    from dcm.format.reader import read

    out = args.output or str(Path(args.model).with_suffix(".onnx"))
    try:
        export_onnx(read(args.model), out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from dcm.converters import load_onnx, to_onnx
    from dcm.format.reader import read
    from dcm.runtime import InferenceSession

    model = read(args.model)
    sess = InferenceSession(model, progress=_progress(args))
    feeds = _npz_inputs(args.inputs, sess)
    if args.source:  # the question a user asks: does the file compute what my model computes?
        load_onnx(args.source)  # a missing or non-ONNX file: its one-line ConversionError
        reference = _onnx_session(args.source)
    else:  # the runtime against onnxruntime on the same stored weights
        reference = _onnx_session(to_onnx(model).SerializeToString())
    got = sess.run(None, feeds)  # first: a feed of the wrong shape is named by dcm, not onnxruntime
    rows = _compare(sess.get_outputs(), got, reference.run(None, feeds), args.rtol, args.atol)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"reference: onnxruntime on {args.source or 'the dense export of ' + args.model}"
              + ("" if args.source else " (the file's own weights; --source MODEL.onnx compares with the source model)"))
        for r in rows:
            top1 = f", top-1 agreement {r['top1_agreement']:.2%}" if "top1_agreement" in r else ""
            print(f"{r['output']}: max abs diff {r['max_abs']:.3g}, max rel diff {r['max_rel']:.3g}{top1} "
                  f"{'OK' if r['ok'] else 'MISMATCH'}")
    return EXIT_OK if all(r["ok"] for r in rows) else EXIT_INVALID


def cmd_bench(args) -> int:
    from dcm.format.stats import shorten
    from dcm.runtime import InferenceSession

    kernels = None if args.kernels == "auto" else args.kernels
    sess = InferenceSession(args.model, device=args.device, kernels=kernels, batch_hint=args.batch,
                            threads=args.threads, progress=_progress(args))
    feeds = _npz_inputs(args.inputs, sess, batch=args.batch)
    _check_run(sess, feeds)
    runs = _times(lambda: sess.run(None, feeds), args.runs)
    nodes = sess.profile(feeds, runs=args.runs)
    total = sum(n["seconds"] for n in nodes) or 1.0
    report = {"model": args.model, "device": args.device, "batch": args.batch, "runs": args.runs,
              "inputs": args.inputs or "random", "median_ms": 1e3 * float(np.median(runs)),
              "min_ms": 1e3 * float(np.min(runs)),
              "nodes": [{**{k: v for k, v in n.items() if k != "seconds"}, "ms": 1e3 * n["seconds"]} for n in nodes]}
    if args.onnxruntime:  # after dcm: onnxruntime's idle workers spin and would slow dcm's runs
        ort_runs = _times(_onnxruntime_runner(sess, feeds, args.threads), args.runs)
        report["onnxruntime_median_ms"] = 1e3 * float(np.median(ort_runs))
        report["dcm_vs_onnxruntime"] = report["median_ms"] / report["onnxruntime_median_ms"]
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{args.model}: batch {args.batch}, {args.device}, median {report['median_ms']:.3f} ms, "
          f"min {report['min_ms']:.3f} ms over {args.runs} runs")
    if args.onnxruntime:
        print(f"onnxruntime (the same weights, dense): median {report['onnxruntime_median_ms']:.3f} ms; "
              f"dcm/onnxruntime {report['dcm_vs_onnxruntime']:.2f}")
    op_width = max([20, *(len(n["op"]) + 1 for n in report["nodes"])])  # dcm.NhwcGlobalAveragePool is 25
    print(f"{'node':<32}{'op':<{op_width}}{'kernel':<10}{'density':>8}{'ms':>10}{'share':>8}")
    for n in report["nodes"]:
        density = f"{n['density']:.1%}" if "density" in n else "-"
        kernel = n.get("kernel", "fused" if "fused_into" in n else "-")
        print(f"{shorten(n['name'], 31):<32}{n['op']:<{op_width}}{kernel:<10}{density:>8}{n['ms']:>10.3f}"
              f"{n['ms'] / 1e3 / total:>8.1%}")
    return EXIT_OK


def _times(fn, runs: int) -> list[float]:
    """Seconds of each of ``runs`` calls, after one warm-up call (first-touch allocations, thread start-up)."""
    import time

    fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _check_run(sess, feeds) -> None:
    """One run of ``feeds``, so that a feed of the wrong shape is a one-line error before any timing."""
    from dcm.errors import DcmError

    try:
        sess.run(None, feeds)
    except DcmError as exc:
        raise CliError(str(exc)) from None


def _onnxruntime_runner(sess, feeds, threads: int | None):
    """A callable running onnxruntime on the session's model exported to a dense ONNX graph."""
    try:
        import onnxruntime as ort

        from dcm.converters import to_onnx
    except ImportError as exc:
        raise CliError(f"--onnxruntime needs onnx and onnxruntime ({exc.name} is missing): "
                       "pip install 'dcm[onnx]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    o = ort.InferenceSession(to_onnx(sess.model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: o.run(None, feeds)


def cmd_demo(args) -> int:
    from dcm import demo

    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the output folder {args.out}: {exc.strerror}") from None
    recipe = demo.RECIPES[args.model]
    if args.fast:  # a copy: the shared recipe stays as it is for later runs in this process
        recipe = replace(recipe, dense_epochs=2, prune_epochs=3, prune_steps=2, quant_epochs=1)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr if args.json else sys.stdout))
    result = demo.run(recipe, Path(args.out), quiet=args.quiet or not sys.stderr.isatty(), log=log)
    print(json.dumps(result, indent=2) if args.json else "\n" + demo.format_tables(result))
    return EXIT_OK


CONVERT_HELP = """ONNX -> .dcm.

By default weights keep the model's own zeros and are stored in 8-bit codebooks (k-means, 256
values per layer): lossless for a model that already holds at most 256 distinct values per layer
(as dcm.compress leaves it), lossy otherwise. When any weight changes, convert prints one line
with the largest change; --exact stores float32 values exactly, --check DATA.npz measures the
output drift. Each tensor takes the smallest encoding that stores it as asked (raw float32 when
coding does not pay), so no tensor is stored larger than its float32 bytes plus 64-byte alignment.

Layer names (--sparsity, --code-bits, --index-bits) may be the torch module path (fc1,
features.0), the ONNX node name (/fc1/Gemm) or the tensor name (fc1.weight); conv and fc mean
every layer of that kind. A name that matches no layer is an error listing the closest ones.
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dcm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", help="no progress bars or step-by-step logs")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    count = _number(int, 1)
    tolerance = _number(float, 0)

    s = sub.add_parser("validate", parents=[as_json],
                       help="check files against spec.md (exit 0 valid, 1 invalid, 2 unreadable)")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("inspect", parents=[as_json, quiet], help="per-tensor table of where the bytes go")
    s.add_argument("file")
    s.add_argument("--kernels", action="store_true", help="also show the sparse/dense kernel chosen per layer")
    s.add_argument("--batch", type=count, default=1, help="batch size the kernel choice assumes")
    s.add_argument("--paper", action="store_true", help="per-layer table in the columns of the paper's Tables 4/5")
    s.add_argument("--plot", metavar="OUT.png", help="also draw where the bytes go and the weight histograms "
                                                     "(needs dcm[plot])")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("run", parents=[as_json, quiet], help="run a model on .npy inputs")
    s.add_argument("model")
    s.add_argument("-i", "--input", action="append", default=[], metavar="[NAME=]FILE.npy")
    s.add_argument("-o", "--output", default=".", metavar="OUTDIR")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("convert", parents=[as_json, quiet], help="ONNX -> .dcm (default: 8-bit codebooks, "
                       "lossy unless --exact)", description=CONVERT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model")
    s.add_argument("-o", "--output")
    s.add_argument("--exact", action="store_true", help="no quantization: float32 values, output equals the source")
    s.add_argument("--sparsity", action="append", type=_sparsity_arg, metavar="S|NAME=S",
                   help="post-training pruning (no retraining): the fraction of weights set to zero, in [0, 1); "
                        "repeat for several layers")
    s.add_argument("--code-bits", type=_bits_arg(False), metavar="N|conv=N,fc=M,NAME=K",
                   help=f"codebook width in bits ({C.MIN_BITS}..{C.MAX_BITS}; default 8)")
    s.add_argument("--index-bits", type=_bits_arg(True), metavar="N|auto|conv=N,fc=M",
                   help=f"relative-index width in bits ({C.MIN_BITS}..{C.MAX_BITS}, or auto; default conv 8, fc 5)")
    s.add_argument("--compact-graph", action="store_true",
                   help="a smaller graph: short names for intermediate values, no node names, no attributes at "
                        "their ONNX default (inputs, outputs and weights keep their names)")
    s.add_argument("--check", metavar="DATA.npz", help="report output drift against the source model")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("export", help=".dcm -> dense ONNX")
    s.add_argument("model")
    s.add_argument("-o", "--output")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("verify", parents=[as_json, quiet],
                       help="compare the dcm runtime with onnxruntime: on the file's own dense export, "
                            "or with --source on the source model")
    s.add_argument("model")
    s.add_argument("--source", metavar="MODEL.onnx", help="compare with this source model (what a lossy "
                   "conversion changed) instead of the file's own dense export (whether the runtime is right)")
    s.add_argument("--inputs", metavar="DATA.npz")
    s.add_argument("--rtol", type=tolerance, default=1e-4)
    s.add_argument("--atol", type=tolerance, default=1e-5)
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("bench", parents=[as_json, quiet],
                       help="time a model (random inputs or --inputs): latency and per-node time with the kernel "
                            "chosen, and with --onnxruntime the same weights on onnxruntime")
    s.add_argument("model")
    s.add_argument("--batch", type=count, default=1, help="size of every symbolic (batch) dimension")
    s.add_argument("--runs", type=count, default=20)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--kernels", default="auto", choices=["auto", "sparse", "dense"],
                   help="force every weight layer's kernel (default: chosen per layer from density and batch)")
    s.add_argument("--threads", type=count, default=None, help="threads for dcm's kernels and numpy's BLAS pool")
    s.add_argument("--inputs", metavar="DATA.npz", help="time these inputs (arrays named like the model's "
                   "inputs, or one array) instead of random ones")
    s.add_argument("--onnxruntime", action="store_true",
                   help="also time onnxruntime on the same weights exported as a dense ONNX graph")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("demo", parents=[as_json, quiet],
                       help="train, prune, quantize and ship LeNet, a ViT or an LSTM on the bundled MNIST")
    s.add_argument("--model", default="lenet300", choices=["lenet300", "lenet5", "vit", "lstm"])
    s.add_argument("--out", default="demo-out")
    s.add_argument("--fast", action="store_true", help="a few epochs only (smoke test; figures not meaningful)")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.fn(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except (DcmError, CliError) as exc:
        if args.debug:
            raise
        print(f"dcm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ImportError as exc:
        if args.debug:
            raise
        hint = str(exc) if "pip install" in str(exc) else f"missing dependency ({exc}); pip install 'dcm[all]'"
        print(f"dcm {args.command}: error: {hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """The reader of stdout is gone (``| head``): point stdout at /dev/null so that Python's own
    flush at exit does not print a second BrokenPipeError, and exit without a word."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
