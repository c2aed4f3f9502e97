"""The onnx package's own backend node test cases, run through dcm's converter and CPU runtime.

    python -m benchmarks.onnx_node_suite [--failures FILE]

The installed onnx wheel ships the generators of its backend node tests, not their data files, so
the cases are built in memory (``collect_testcases``: 1,884 cases at onnx 1.23, about 6 s). Each
case is one small model plus inputs and expected outputs. A case runs when dcm can express it;
otherwise it is skipped with a reason (``skip_reason``). A case that runs must pass:
``tests/runtime/test_onnx_node_suite.py`` asserts exactly that, and this script writes the per-op
table ``docs/onnx-conformance.md`` and ``benchmarks/results/onnx_node_suite.json``. The model tests
onnx does ship as files (``data_cases``: old PyTorch exports, small models, light CNNs) run the same
way (``tests/runtime/test_onnx_data_suites.py``) and get a section of the page.

Which op a case tests: the node's op for a one-node graph. The multi-node cases are onnx's
``*_expanded`` ones, the function body of an op (LayerNormalization as ReduceMean, Sub, Pow, ...);
they count for the op whose function they expand (read from the case name), since that is what
they check, and they run only when every op of the body is in the registry.
"""
from __future__ import annotations

import argparse
import functools
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DOCS = Path(__file__).resolve().parent.parent / "docs" / "onnx-conformance.md"

# The ops issue 16 ("run the models users actually bring") asks the CPU runtime to support.
ISSUE_OPS = sorted({
    # shapes, indexing, MatMul (run-time shapes and int64/bool values)
    "Slice", "Split", "Expand", "Tile", "Range", "ConstantOfShape", "Constant", "Size", "Shape", "Gather",
    "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Trilu", "OneHot", "DepthToSpace",
    "SpaceToDepth", "CastLike", "Cast", "Concat", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose",
    "Identity", "Pad", "MatMul", "Gemm",
    # elementwise math and logic
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Erf", "Floor", "Ceil", "Round", "Sign", "Min",
    "Max", "Sum", "Mean", "Mod", "Where", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And",
    "Or", "Not", "Xor", "IsNaN", "IsInf", "Add", "Sub", "Mul", "Div",
    # activations
    "Elu", "Selu", "Celu", "PRelu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Gelu", "Mish",
    "ThresholdedRelu", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Softmax", "LogSoftmax",
    # normalization
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
    # reductions
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum", "TopK",
    # layers
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ConvTranspose",
    "Resize", "Upsample", "LSTM", "GRU", "RNN",
})

_TRAINING_DOMAINS = ("ai.onnx.preview.training",)


@functools.lru_cache(maxsize=1)
def all_cases() -> tuple:
    """Every backend node case of the installed onnx (built once per process: ~6 s)."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the generators overflow on purpose (casts)
        warnings.simplefilter("ignore")
        return tuple(collect_testcases(None))


# Case-name stems that are not the op's name (lowercase, no underscores).
_STEM_ALIASES = {"sce": "SoftmaxCrossEntropyLoss", "nllloss": "NegativeLogLikelihoodLoss",
                 "mvn": "MeanVarianceNormalization", "greaterequal": "GreaterOrEqual", "lessequal": "LessOrEqual",
                 "flexattention": "FlexAttention"}


@functools.lru_cache(maxsize=1)
def _schema_names() -> dict[str, str]:
    """{op name lowercased without underscores: op name} for every ai.onnx op, plus the case-name aliases."""
    import onnx.defs

    names = {s.name.lower(): s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ""}
    return {**names, **_STEM_ALIASES}


def main_op(case) -> str:
    """The op a case tests (see the module docstring)."""
    nodes = case.model.graph.node
    if len(nodes) == 1:
        return nodes[0].op_type
    stem = re.sub(r"^test_", "", case.name).split("_expanded")[0].replace("_", "").lower()
    names = _schema_names()
    best = max((k for k in names if stem.startswith(k)), key=len, default=None)
    return names[best] if best else nodes[0].op_type


def graph_ops(case) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


# The model tests onnx ships as files (onnx/backend/test/data): old PyTorch exports of layers and
# operators (opset 6-9), small multi-op models, and "light" versions of AlexNet, DenseNet-121,
# Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19 and ZFNet-512 (constant-filled weights).
DATA_SUITES = ("pytorch-converted", "pytorch-operator", "simple", "light")


@dataclass
class DataCase:
    """A model test read from onnx's data files, shaped as a node case (run_case and skip_reason take
    either): its inputs and expected outputs per data set, the runner's default tolerances."""

    name: str
    model: Any
    data_sets: list
    rtol: float = 1e-3
    atol: float = 1e-7


def _tensors(folder: Path, kind: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


@functools.lru_cache(maxsize=1)
def data_cases() -> tuple[DataCase, ...]:
    """Every model test of DATA_SUITES in the installed onnx. A light model has no input file: its
    input is the runner's own (``Runner.generate_dummy_data``, not random) and its output a .pb
    beside it."""
    import onnx
    from onnx.backend.test.runner import Runner

    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases = []
    for suite in DATA_SUITES[:-1]:
        for folder in sorted(p for p in (root / suite).iterdir() if (p / "model.onnx").exists()):
            sets = [(_tensors(d, "input"), _tensors(d, "output")) for d in sorted(folder.glob("test_data_set_*"))]
            cases.append(DataCase(f"{suite}/{folder.name}", onnx.load(str(folder / "model.onnx")), sets))
    for path in sorted((root / "light").glob("light_*.onnx")):
        model = onnx.load(str(path))
        weights = {t.name for t in model.graph.initializer}
        inputs = [Runner.generate_dummy_data(v, seed=0, name=path.stem) for v in model.graph.input if v.name not in weights]
        outputs = _tensors(path.parent, f"{path.stem}_output")
        cases.append(DataCase(f"light/{path.stem}", model, [(inputs, outputs)]))
    return tuple(cases)


def _elem_types(case) -> tuple[set[int], list[str]]:
    """(tensor element types the case's graph uses, descriptions of its non-tensor values)."""
    import onnx

    g = case.model.graph
    types: set[int] = set()
    other = []
    for v in [*g.input, *g.output, *g.value_info]:
        kind = v.type.WhichOneof("value")
        if kind == "tensor_type":
            types.add(v.type.tensor_type.elem_type)
        else:
            other.append(f"{kind.removesuffix('_type')} value {v.name!r}")
    types.update(t.data_type for t in g.initializer)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                types.add(a.t.data_type)
            elif n.op_type in ("Cast", "CastLike", "EyeLike", "RandomNormal", "RandomUniform") and a.name in ("to", "dtype"):
                types.add(a.i)
    types.discard(onnx.TensorProto.UNDEFINED)
    return types, other


def _training_mode(node) -> bool:
    """BatchNormalization with training_mode=1, or Dropout given a training_mode input (random masks)."""
    if node.op_type == "Dropout":
        return len(node.input) > 2 and bool(node.input[2])
    return any(a.name == "training_mode" and a.i for a in node.attribute)


def skip_reason(case) -> str | None:
    """Why dcm cannot run this case (None: it must pass). Reasons are grouped by their first words."""
    import onnx

    from dcm.converters.onnx_in import ONNX_DTYPES, _Graph
    from dcm.errors import ConversionError
    from dcm.runtime.cpu import REGISTRY

    m = case.model
    domains = sorted({n.domain for n in m.graph.node if n.domain not in ("", "ai.onnx")})
    training = [d for d in domains if d in _TRAINING_DOMAINS]
    if training or any(_training_mode(n) for n in m.graph.node):
        return "training mode: dcm runs inference graphs only"
    if domains:
        return f"custom domain: {', '.join(domains)} is not the ONNX standard domain"
    types, other = _elem_types(case)
    if other:
        return f"non-tensor type: {other[0]} (sequences, optionals and maps are not dcm tensors)"
    unsupported = sorted(onnx.TensorProto.DataType.Name(t) for t in types if t not in ONNX_DTYPES)
    if unsupported:
        return f"dtype: {', '.join(unsupported)} not supported by dcm"
    missing = sorted(graph_ops(case) - set(REGISTRY))
    if missing:  # ... unless the converter replaces them by their ONNX function bodies
        try:
            missing = sorted({n.op_type for n in _Graph(m).nodes} - set(REGISTRY))
        except ConversionError:
            pass
    if missing:
        return f"not in registry: {', '.join(missing)}"
    return None


def _array(x: Any) -> np.ndarray:
    """A data set value as numpy (the generators store some types as TensorProto, scalars as numpy scalars)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(x) if hasattr(x, "data_type") else np.asarray(x)


def run_case(case, device: str = "cpu") -> None:
    """Convert (exact) and run every data set on ``device`` ("torch-cpu": the GPU backend's kernels
    on the CPU); raise AssertionError (or dcm's error) on a mismatch."""
    from dcm.converters.onnx_in import ConvertOptions, from_onnx
    from dcm.runtime import InferenceSession

    g = case.model.graph
    session = InferenceSession(from_onnx(case.model, ConvertOptions(exact=True)), device=device)
    weights = {t.name for t in g.initializer}
    in_names = [v.name for v in g.input if v.name not in weights]
    out_names = [v.name for v in g.output]
    for inputs, expected in case.data_sets:
        got = session.run(None, {n: _array(x) for n, x in zip(in_names, inputs)})
        assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
        for name, actual, want in zip(out_names, got, expected):
            compare(name, actual, _array(want), case.rtol, case.atol)


def compare(name: str, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> None:
    """Same dtype and shape; floats within the case's tolerances with NaN where expected; others exact."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, f"output {name!r}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"output {name!r}: shape {actual.shape}, expected {expected.shape}"
    if np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=f"output {name!r}")
    else:
        assert np.array_equal(actual, expected), f"output {name!r}: values differ (exact dtype {expected.dtype})"


def one_line(exc: BaseException) -> str:
    """The error in one line; an unexpected exception (not dcm's, not a mismatch) also says where it
    was raised, since "KeyError: 'y'" alone does not tell a kernel's author what broke."""
    import traceback

    from dcm.errors import DcmError

    text = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if not isinstance(exc, (DcmError, AssertionError)) and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text += f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
    return text


def run_all(cases=None, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per case: name, op, status ("pass", "fail", "skip") and reason or error."""
    import warnings

    rows = []
    for case in cases if cases is not None else all_cases():
        reason = skip_reason(case)
        row = {"case": case.name, "op": main_op(case), "status": "skip", "reason": reason}
        if reason is None:
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run_case(case, device)
                row.update(status="pass", reason=None)
            except Exception as exc:  # noqa: BLE001  every failure is recorded, none stops the run
                row.update(status="fail", reason=one_line(exc))
            row["seconds"] = round(time.perf_counter() - start, 4)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], group: str = "op") -> dict[str, dict[str, Any]]:
    """Per op (or per suite, ``group="suite"``: the case name's first part): total, run, passed, and
    skipped counts by reason group."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"total": 0, "run": 0, "passed": 0, "skipped": Counter()})
    for r in rows:
        p = per[r["op"] if group == "op" else r["case"].split("/")[0]]
        p["total"] += 1
        if r["status"] == "skip":
            p["skipped"][r["reason"].split(":")[0]] += 1
        else:
            p["run"] += 1
            p["passed"] += r["status"] == "pass"
    return per


def _skips(counter: Counter) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counter.items()))


def data_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The page's section on onnx's model test files: per suite, passed / run and the skips."""
    per = summarize(rows, group="suite")
    run = sum(p["run"] for p in per.values())
    lines = ["## Model test files", "",
             f"onnx also ships model tests as files (`onnx/backend/test/data`): old PyTorch exports of layers and "
             f"operators (opset 6-9: the converter brings a model older than opset 7 up with onnx's version "
             f"converter), small multi-op models, and light AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, "
             f"ShuffleNet, SqueezeNet, VGG-19 and ZFNet-512 (constant weights, the runner's own inputs). "
             f"**{sum(p['passed'] for p in per.values())} of {run} runnable cases pass** "
             f"(onnx's runner tolerances, rtol 1e-3 and atol 1e-7; `tests/runtime/test_onnx_data_suites.py`).", "",
             "| suite | passed / run | cases | skipped (reason: count) |", "|---|---|---|---|"]
    lines += [f"| {suite} | {p['passed']} / {p['run']} | {p['total']} | {_skips(p['skipped'])} |"
              for suite, p in per.items()]
    failing = [r for r in rows if r["status"] == "fail"]
    lines += [""] + [f"- failing: {r['case']}: {r['reason'][:200]}" for r in failing] + ([""] if failing else [])
    return lines


def markdown(rows: list[dict[str, Any]], gpu_rows: list[dict[str, Any]] | None = None,
             data_rows: list[dict[str, Any]] | None = None) -> str:
    """The page; ``gpu_rows`` (the same cases on the GPU backend, device="torch-cpu") add a column,
    ``data_rows`` (data_cases) a section."""
    import onnx

    from dcm.runtime.cpu import REGISTRY

    per = summarize(rows)
    gpu = summarize(gpu_rows) if gpu_rows is not None else {}
    run = [r for r in rows if r["status"] != "skip"]
    passed = sum(r["status"] == "pass" for r in run)
    gpu_passed = sum(r["status"] == "pass" for r in gpu_rows or [])
    lines = [
        "# ONNX backend node tests",
        "",
        f"The onnx package's own backend node test cases (onnx {onnx.__version__}: {len(rows)} cases), each "
        "converted with `from_onnx(model, ConvertOptions(exact=True))` and run by `dcm.InferenceSession` on the "
        "CPU, outputs compared with the case's own tolerances (floats, NaN where expected) or exactly (integers, "
        "bool), dtype and shape included.",
        "",
        f"**{passed} of {len(run)} runnable cases pass; {len(rows) - len(run)} are skipped.** "
        "`tests/runtime/test_onnx_node_suite.py` requires every runnable case to pass "
        "(`python -m pytest tests/runtime/test_onnx_node_suite.py -rs` lists each skip with its reason). "
        "This page is generated by `python -m benchmarks.onnx_node_suite`.",
        "",
        "A case is skipped, with its reason, when it needs what dcm does not have: a string, bfloat16, float8, "
        "4-bit, complex or unsigned 16/32/64-bit tensor (`dtype`), a sequence, optional or map value "
        "(`non-tensor type`), training mode (`training mode`), an op outside the CPU registry that the "
        "converter cannot replace by its ONNX function body (`not in registry`; `dcm/converters/functions.py`), "
        "or a domain other than the standard one (`custom domain`). Multi-node cases are onnx's `*_expanded` ones (an op's function body); they count "
        "for the op they expand and run when every op of the body is in the registry.",
        "",
        *([f"The GPU backend (`docs/gpu.md`) runs the same cases with its torch kernels on the CPU "
           f"(`device=\"torch-cpu\"`): **{gpu_passed} of {len(run)} pass** (column *GPU backend*; "
           "`tests/runtime/test_gpu_ops.py` requires every case the CPU passes to pass there).", ""]
          if gpu_rows is not None else []),
        "## Ops in the CPU registry",
        "",
        "| op | passed / run | GPU backend | cases | skipped (reason: count) |",
        "|---|---|---|---|---|",
    ]
    for op in sorted(REGISTRY):
        p = per.get(op)
        if p is None:
            lines.append(f"| {op} | - | - | 0 | no backend test case |")
            continue
        g = gpu.get(op)
        on_gpu = f"{g['passed']} / {g['run']}" if g is not None else "-"
        lines.append(f"| {op} | {p['passed']} / {p['run']} | {on_gpu} | {p['total']} | {_skips(p['skipped'])} |")
    missing = [op for op in ISSUE_OPS if op not in REGISTRY]
    lines += ["", "## Ops of issue 16 not in the CPU registry", ""]
    if missing:
        lines += ["| op | cases |", "|---|---|"]
        lines += [f"| {op} | {per[op]['total'] if op in per else 0} |" for op in missing]
    else:
        lines.append("None: every op the issue lists is in the registry.")
    others = sorted((op for op in per if op not in REGISTRY and op not in ISSUE_OPS), key=lambda op: (-per[op]["total"], op))
    lines += ["", "## Other ops with backend cases, not in the CPU registry", "",
              "The converter replaces such an op by its ONNX function body where ONNX defines one whose ops "
              "are all in the registry (`dcm/converters/functions.py`): those cases run, as do the `*_expanded` "
              "ones.", "",
              "| op | passed / run | cases | skipped (reason: count) |", "|---|---|---|---|"]
    lines += [f"| {op} | {per[op]['passed']} / {per[op]['run']} | {per[op]['total']} | {_skips(per[op]['skipped'])} |"
              for op in others]
    if data_rows is not None:
        lines += ["", *data_markdown(data_rows)]
    failing = [r for r in rows if r["status"] == "fail"]
    lines += ["", "## Failing cases", ""]
    if failing:
        lines += ["| case | op | error |", "|---|---|---|"]
        lines += [f"| {r['case']} | {r['op']} | {r['reason'][:200].replace('|', '/')} |" for r in failing]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def failures_text(rows: list[dict[str, Any]]) -> str:
    failing = [r for r in rows if r["status"] == "fail"]
    run = sum(r["status"] != "skip" for r in rows)
    head = [f"# onnx backend node cases: {run - len(failing)} of {run} runnable pass; {len(failing)} fail "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; python -m benchmarks.onnx_node_suite)",
            "# case | op | error"]
    return "\n".join(head + [f"{r['case']} | {r['op']} | {r['reason']}" for r in failing]) + "\n"


def main() -> None:
    from benchmarks.common import save

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--failures", type=Path, help="also write the failing cases (case | op | error) here")
    ap.add_argument("--no-docs", action="store_true", help=f"do not rewrite {DOCS.name}")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = run_all()
    seconds = time.perf_counter() - start
    data_rows = run_all(data_cases())
    data_run = [r for r in data_rows if r["status"] != "skip"]
    print(f"model test files: {sum(r['status'] == 'pass' for r in data_run)} of {len(data_run)} runnable pass")
    gpu_rows = None
    try:
        import torch  # noqa: F401  (the GPU backend's column needs it)
    except ImportError:
        print("torch is not installed: no GPU backend column")
    else:
        gpu_rows = run_all(device="torch-cpu")
    per = summarize(rows)
    run = [r for r in rows if r["status"] != "skip"]
    passed = sum(r["status"] == "pass" for r in run)
    print(f"{passed} of {len(run)} runnable cases pass, {len(rows) - len(run)} skipped ({seconds:.1f} s)")
    if gpu_rows is not None:
        print(f"GPU backend (torch-cpu): {sum(r['status'] == 'pass' for r in gpu_rows)} pass")
        for r in gpu_rows:
            if r["status"] == "fail":
                print(f"FAIL on the GPU backend {r['case']} ({r['op']}): {r['reason']}")
    for r in rows + data_rows:
        if r["status"] == "fail":
            print(f"FAIL {r['case']} ({r['op']}): {r['reason']}")
    payload = {"cases": len(rows), "run": len(run), "passed": passed, "seconds": seconds,
               "per_op": {op: {**p, "skipped": dict(p["skipped"])} for op, p in sorted(per.items())},
               "rows": rows, "data_rows": data_rows,
               **({"gpu_passed": sum(r["status"] == "pass" for r in gpu_rows), "gpu_rows": gpu_rows}
                  if gpu_rows is not None else {})}
    print(f"wrote {save('onnx_node_suite', payload)}")
    if not args.no_docs:
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(markdown(rows, gpu_rows, data_rows))
        print(f"wrote {DOCS}")
    if args.failures:
        args.failures.write_text(failures_text(rows))
        print(f"wrote {args.failures}")


if __name__ == "__main__":
    main()
