"""Every snippet in README.md runs, so that the manual cannot drift from the code.

- each ```python block runs in a folder holding what the text says is there (``demo-out/lenet300.dcm``,
  ``model.onnx``) with the user's own objects it names (``model``, ``train_one_epoch``, ...) as
  small stand-ins;
- the ```console session runs in the folder ``examples/onnx_post_training.py --quick`` fills, and
  each output line shown must appear in the real output with its numbers masked (numbers depend
  on the trained weights and the machine, the rest must not drift);
- the command synopsis names only options the parser accepts; relative links point at files;
- the generated tables in README.md and docs/ match the JSON they come from.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == kind]


def test_readme_has_snippets():
    assert len(blocks("python")) >= 4 and len(blocks("console")) == 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """``demo-out/lenet300.dcm`` and ``model.onnx``: LeNet-300-100 with pruned random weights."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from dcm import zoo
    from dcm.converters import from_torch
    from dcm.converters.torch_in import torch_to_onnx_bytes

    w = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    net = zoo.LeNet300().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight[m.weight.abs() < m.weight.abs().quantile(0.9)] = 0
    (w / "demo-out").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_torch(net, torch.zeros(1, 1, 28, 28), w / "demo-out" / "lenet300.dcm")
    (w / "model.onnx").write_bytes(torch_to_onnx_bytes(net, torch.zeros(1, 1, 28, 28)))
    return w


def _user_objects() -> dict:
    """The objects the snippets say are the reader's own, as small stand-ins."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from dcm import zoo

    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    model = zoo.LeNet300()

    def train_one_epoch(m):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
        for i in range(0, 128, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()

    def eval_fn(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    objects = {"model": model, "example_input": torch.zeros(1, 1, 28, 28), "train_one_epoch": train_one_epoch,
               "eval_fn": eval_fn, "loader": DataLoader(TensorDataset(x, y), batch_size=64)}
    try:
        import lightning.pytorch as pl
    except ImportError:
        return objects

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = zoo.LeNet300()

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    objects["lit_module"] = Lit()
    return objects


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs(index, workdir, monkeypatch):
    code = blocks("python")[index]
    if "lightning" in code:
        pytest.importorskip("lightning")
    if "plot(" in code:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(workdir)
    namespace = {"__name__": "readme", **_user_objects()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lossy-conversion line; Lightning's advice
        exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)


def _session() -> list[tuple[str, list[str]]]:
    """(command, shown output lines) for each ``$ `` line of the console block."""
    out: list[tuple[str, list[str]]] = []
    for line in blocks("console")[0].splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif line.strip():
            out[-1][1].append(line)
    return out


def _pattern(line: str) -> re.Pattern:
    """The line with every number a wildcard and any run of spaces as any run of spaces."""
    tokens = [re.sub(NUMBER, lambda _: "\0", t) for t in line.split()]
    return re.compile(r"\s+".join(re.escape(t).replace("\0", NUMBER) for t in tokens))


def test_console_session_runs_and_prints_what_is_shown(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_post_training.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for command, shown in _session():
        argv = command.split()
        assert argv[0] == "dcm"
        r = subprocess.run([sys.executable, "-m", "dcm.cli", *argv[1:]], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        printed = [x.strip() for x in (r.stdout + r.stderr).splitlines()]
        assert r.returncode == (1 if any("MISMATCH" in x for x in shown) else 0), (command, r.stderr)
        for line in shown:
            assert any(_pattern(line).fullmatch(x) for x in printed), (command, line, printed)


def test_synopsis_names_only_real_commands_and_options():
    from dcm.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    synopsis = next(b for b in blocks("text") if b.startswith("dcm "))
    current = None
    for line in synopsis.splitlines():
        if line.startswith("dcm "):
            current = commands[line.split()[1]]
        known = {s for a in current._actions for s in a.option_strings}
        for option in re.findall(r"\[(-{1,2}[\w-]+)", line):
            assert option in known, (line, option)


def test_relative_links_exist():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target


def test_generated_tables_match_their_data():
    from benchmarks import docs

    for path in docs.pages():
        text = path.read_text()
        assert docs.page(text) == text, f"{path.name} is out of date: run python -m benchmarks.docs"
