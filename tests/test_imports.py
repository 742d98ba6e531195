"""No import cycle: every module of trainable/, sweep/ and analysis/ can be the first one imported.

One fresh interpreter imports each module in turn after dropping every project module it holds, so
each import starts alone (as `python -m <module>` would) while torch, Ray and MLflow load only once.
"""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGES = ("trainable", "sweep", "analysis")
IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in {packages!r}]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
""".format(packages=PACKAGES)


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            names.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return names


@pytest.mark.integration
@pytest.mark.slow
def test_each_module_imports_first_without_a_cycle():
    modules = project_modules()
    assert len(modules) > 30 and "trainable.loop" in modules and "sweep.launch" in modules
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def imports_of(module: str) -> set[str]:
    """Project modules `module` imports anywhere in its file, inside functions too."""
    path = ROOT / (module.replace(".", "/") + ("/__init__.py" if module in PACKAGES else ".py"))
    known, found = set(project_modules()), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known and name != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_cycle_finder_sees_a_function_level_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_even_through_imports_inside_functions():
    graph = {module: imports_of(module) for module in project_modules()}
    assert "analysis.mlflow_runs" in graph["analysis.load"]        # the parser sees function-level imports
    assert cycles(graph) == []
