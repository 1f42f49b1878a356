"""qcal's package layering: every module sits in one layer, imports point down (or across, within a
layer), and no import cycle exists, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scripts" / "qcal"

LAYERS = [
    # 1: files, names, machine facts, graph plumbing
    {"errors", "files", "names", "cpu", "graph"},
    # 2: core maths
    {"stats", "ranges", "detections"},
    # 3: data and model
    {"preprocess", "images", "raws", "labels", "model", "runtime", "input_list", "fetch", "darknet",
     "default_model", "synthetic", "targets"},
    # 4: engine
    {"calibrate", "quantize", "encodings", "evaluate", "snpe", "htp", "search.layers", "search.scoring",
     "search.steps", "search.loop"},
    # 5: reports
    {"report.html", "report.text", "report.coverage", "report.accuracy", "report.quantize"},
    # 6: the workflow: settings, the image plan, and the one module that knows Snakemake
    {"settings", "plan", "workflow"},
]
LAYER_OF = {module: i for i, layer in enumerate(LAYERS) for module in layer}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        found[".".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """qcal modules imported anywhere in the file (module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qcal"):
            base = node.module.removeprefix("qcal").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                names.add(candidate if candidate in LAYER_OF else base)
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("qcal.") for a in node.names if a.name.startswith("qcal.")}
    return {n for n in names if n}


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYER_OF)


@pytest.mark.parametrize("module", sorted(LAYER_OF))
def test_imports_point_down(module):
    path = modules()[module]
    upward = {m for m in imports(path) if LAYER_OF[m] > LAYER_OF[module]}
    assert not upward, f"qcal.{module} (layer {LAYER_OF[module] + 1}) imports higher layers: {sorted(upward)}"


def test_no_import_cycles():
    graph = {module: imports(path) for module, path in modules().items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


def test_only_the_workflow_module_knows_snakemake():
    knows = {module for module, path in modules().items() if "snakemake" in path.read_text().lower()
             and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "snakemake" in ast.unparse(n)
                     for n in ast.walk(ast.parse(path.read_text())))}
    assert knows <= {"workflow"}
