"""The package's shape: every module imports on its own, no import cycles, small functions."""

import ast
import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MODULES = sorted(
    ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in (SRC / "snnconv").rglob("*.py")
)
MAX_FUNCTION_LINES = 60  # CONTRIBUTING.md: a function a reader holds in one screen


def _import_in_child(name: str) -> str:
    """Import ``name`` in a forked child that has torch loaded but no snnconv module yet;
    '' on success, else the error's last line."""
    code = (
        "import importlib, sys, torch, numpy\n"
        "assert not [m for m in sys.modules if m.startswith('snnconv')]\n"
        "importlib.import_module(sys.argv[1])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True)
    return "" if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # one interpreter (and one torch import) per module
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """One interpreter per module, so a cycle that one import order hides still fails. The
    Triton scan needs triton, which only CUDA machines have: there, and only there, it must
    fail for that reason alone."""
    names = [n for n in MODULES if n != "snnconv.__main__"]  # __main__ runs the CLI on import
    with ThreadPoolExecutor(4) as pool:
        errors = dict(zip(names, pool.map(_import_in_child, names)))
    if importlib.util.find_spec("triton") is None:
        assert errors.pop("snnconv.kernels.triton_scan") == (
            "ModuleNotFoundError: No module named 'triton'"
        )
    assert not {n: e for n, e in errors.items() if e}


def _imports(path: Path) -> set[str]:
    """snnconv modules imported by a module, at module level (function-level imports are lazy
    on purpose and do not form cycles at import time)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snnconv"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("snnconv")}
    return out


def test_no_import_cycle():
    graph = {}
    for p in (SRC / "snnconv").rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in _imports(p) if m in MODULES and m != name}
    # a package's __init__ importing its own submodules is not a cycle of concepts
    state = {}

    def visit(n, path):
        state[n] = "open"
        for m in graph.get(n, ()):
            if m == "snnconv" or n == "snnconv":
                continue
            if state.get(m) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, n, m]))
            if m not in state:
                visit(m, [*path, n])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [])


def test_functions_are_short():
    long = []
    for p in (SRC / "snnconv").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long
