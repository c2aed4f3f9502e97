"""Einsum: the equation parsed and checked once at load (a bad one is refused naming what is wrong),
each call's ranks and output size checked before any work, then ``np.einsum`` on a contraction path
found once per input shape signature, with no intermediate larger than a tensor may be.

With a path numpy contracts pairwise on its fast products rather than in one pass of its own loops:
attention's ``bhqd,bhkd->bhqk`` over 3 heads of 197 x 64 took 0.28 ms against 2.1 without one (and
onnxruntime's Einsum 0.26), ``bij,jk->bik`` (197 x 192 @ 192 x 768) 0.58 against onnxruntime's 0.60
(one thread, minima of 30-50 calls). Searched for once, not on each call: three 8 x 8 operands took
19 us against 39 with ``optimize=True``. A batched product of our own through
``blas.matmul`` came within 20% of numpy's either way on two threads, so there is none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.format import constants as C
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.kernel import Kernel

MAX_EQUATION = 4096  # characters of an equation, spaces included
ELLIPSIS = "..."
PATHS_KEPT = 16  # contraction paths kept per node (one per input shape signature)


@dataclass(frozen=True)
class Equation:
    """An Einsum equation: each operand's subscripts (letters, with "." standing for the ellipsis) and
    the output's, explicit or worked out as ONNX and numpy do (implicit mode: the ellipsis, then the
    letters that appear once, in ASCII order)."""

    terms: tuple[str, ...]
    output: str

    @property
    def text(self) -> str:
        """The explicit equation, as numpy and torch read it."""
        return ",".join(t.replace(".", ELLIPSIS) for t in self.terms) + "->" + self.output.replace(".", ELLIPSIS)


def _term(text: str, where: str) -> str:
    """One term's subscripts with its ellipsis (at most one) as a single "."."""
    if text.count(ELLIPSIS) > 1 or text.replace(ELLIPSIS, "").count("."):
        raise ValueError(f"{where} {text!r}: an ellipsis is three dots, at most one per term")
    letters = text.replace(ELLIPSIS, "")
    bad = sorted({ch for ch in letters if not ("a" <= ch <= "z" or "A" <= ch <= "Z")})
    if bad:
        raise ValueError(f"{where} {text!r}: subscripts are letters a-z and A-Z, not {''.join(bad)!r}")
    return text.replace(ELLIPSIS, ".")


def parse(equation: str, operands: int) -> Equation:
    """The equation of an Einsum with ``operands`` inputs, checked: a ValueError names what is wrong."""
    if not isinstance(equation, str):
        raise ValueError(f"equation must be a string, got {type(equation).__name__}")
    if len(equation) > MAX_EQUATION:
        raise ValueError(f"equation of {len(equation)} characters (at most {MAX_EQUATION})")
    text = "".join(equation.split())
    if text.count("->") > 1 or text.replace("->", "").count("-") or text.replace("->", "").count(">"):
        raise ValueError(f"equation {equation!r}: at most one '->', and no other '-' or '>'")
    left, arrow, right = text.partition("->")
    terms = tuple(_term(t, "term") for t in left.split(","))
    if len(terms) != operands:
        raise ValueError(f"equation {equation!r} has {len(terms)} terms for {operands} inputs")
    if arrow:
        output = _term(right, "output")
        repeated = sorted({ch for ch in output if ch != "." and output.count(ch) > 1})
        if repeated:
            raise ValueError(f"equation {equation!r}: output subscript {''.join(repeated)!r} repeated")
        missing = sorted(set(output) - set("".join(terms)))
        if missing:
            raise ValueError(f"equation {equation!r}: output subscript {''.join(missing)!r} is in no input")
    else:
        letters = "".join(terms).replace(".", "")
        output = ("." if any("." in t for t in terms) else "") + "".join(
            sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    return Equation(terms, output)


def _labels(term: str, ndim: int, name: str) -> list[str | int]:
    """Each axis's label: its letter, or for the ellipsis's axes their place counted from the right
    (-1 the last), so that ellipses of different ranks line up as numpy broadcasts them."""
    letters = len(term.replace(".", ""))
    if "." not in term:
        if ndim != letters:
            raise ValueError(f"{name} has rank {ndim}, its subscripts {term!r} name {letters} axes")
        return list(term)
    extra = ndim - letters
    if extra < 0:
        raise ValueError(f"{name} has rank {ndim}, fewer than the {letters} axes its subscripts name")
    at = term.index(".")
    return [*term[:at], *range(-extra, 0), *term[at + 1 :]]


def check_operands(eq: Equation, xs) -> None:
    """Raise where an operand's rank does not fit its subscripts or the output would be larger than a
    tensor may be (numpy arrays or torch tensors), before any work: sizes broadcast as in numpy."""
    labels = [_labels(term, x.ndim, f"input {i}") for i, (term, x) in enumerate(zip(eq.terms, xs))]
    rank = max((-label for ls in labels for label in ls if isinstance(label, int)), default=0)
    size: dict[str | int, int] = {}
    for ls, x in zip(labels, xs):
        for label, n in zip(ls, x.shape):
            if size.get(label, 1) == 1:  # a 1 gives way to the other operands' size
                size[label] = int(n)
    out = [label for ch in eq.output for label in (range(-rank, 0) if ch == "." else (ch,))]
    check_elements([size[label] for label in out], "Einsum output")


@register("Einsum")
class Einsum(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if not node.inputs:
            raise UnsupportedOpError(f"Einsum {node.name!r}: no inputs")
        try:
            self.equation = parse(self.attrs.get("equation"), len(node.inputs))
        except ValueError as e:
            raise UnsupportedOpError(f"Einsum {node.name!r}: {e}") from None
        self.paths: dict[tuple, list] = {}

    def check(self, xs) -> None:
        """One element type, ranks that fit the subscripts, an output of bounded size."""
        if len({x.dtype for x in xs}) > 1:
            raise ValueError(f"inputs of different types: {', '.join(str(x.dtype) for x in xs)}")
        check_operands(self.equation, xs)

    def __call__(self, *xs):
        self.check(xs)
        key = tuple(x.shape for x in xs)
        path = self.paths.get(key)
        if path is None:
            path = np.einsum_path(self.equation.text, *xs, optimize=("greedy", C.MAX_ELEMENTS))[0]
            if len(self.paths) >= PATHS_KEPT:
                self.paths.clear()
            self.paths[key] = path
        y = np.asarray(np.einsum(self.equation.text, *xs, optimize=path))
        if any(np.may_share_memory(y, x) for x in xs):  # a transpose or diagonal is a view of its input
            y = y.copy()
        return (y,)

    def describe(self) -> dict:
        return {"equation": self.equation.text}
