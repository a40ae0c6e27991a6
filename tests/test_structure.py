"""The code's shape: one GAN step for every caller, and imports that only point downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ppgan.gan import GanStep
from ppgan.tasks import run_task
from tests.conftest import judge_overrides, make_cfg

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ppgan"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ppgan module `path` imports, at any depth of the file (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ppgan")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ppgan"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    PKG.parent / Path(*sub.split(".")) / "__init__.py"
                ).exists()
                out.add(sub if is_module else node.module)
    return out


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def test_no_task_imports_another_task():
    for name, path in MODULES.items():
        if name.startswith("ppgan.tasks."):
            others = {m for m in imports_of(path) if m.startswith("ppgan.tasks")}
            assert not others, f"{name} imports {others}"


def test_losses_are_pure():
    for name, path in MODULES.items():
        if name.startswith("ppgan.losses"):
            bad = {m for m in imports_of(path) if m.startswith(("ppgan.engine", "ppgan.data"))}
            assert not bad, f"{name} imports {bad}"


def test_no_import_cycle():
    """A module imports its parent packages too (their __init__ runs first): edges to those."""

    def deps(name: str) -> set[str]:
        out = set()
        for m in imports_of(MODULES[name]):
            parts = m.split(".")
            out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        return {m for m in out if m in MODULES and m != name and not name.startswith(m + ".")}

    graph = {name: deps(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_both_loops_call_the_same_step(monkeypatch, tmp_path, judges, data_dir):
    callers = []
    real_call = GanStep.__call__

    def counting(self, stream):
        callers.append(self.prefix)
        return real_call(self, stream)

    monkeypatch.setattr(GanStep, "__call__", counting)
    small = [
        "task.epochs=1",
        "task.selection_warmup=0",
        "model.encoder.units=16",
        "model.decoder.units=16",
        "model.critic.channels=[8,16,16,16]",
    ]
    base = [f"paths.data_dir={data_dir}", *judge_overrides(judges)]
    run_task(make_cfg(*base, "task=anonymizer", *small), tmp_path / "gan")
    assert set(callers) == {"gen"}
    gan = tmp_path / "gan" / "checkpoints" / "best.pt"
    cf = ["task=counterfactual", f"task.checkpoint={gan}", "task.epochs=1"]
    run_task(make_cfg(*base, *cf), tmp_path / "cf")
    assert set(callers) == {"gen", "cf"}
    # The benchmark's side (it times this same GanStep.__call__): tests/test_speed.py.
