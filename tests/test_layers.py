"""The core is layers (docs/architecture.md): a module imports only from its own layer or the layers below it,
and no import cycle exists, counting every import: at the top, inside functions, and under `TYPE_CHECKING`.

Why a test: an import from a lower layer to a higher one is how the old catalog came to import the training
loop for its types, closing an eight-module circle; nothing else stops the next one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "pgolf_core"

# Bottom to top. The same list, drawn, is in docs/architecture.md.
LAYERS: list[tuple[str, list[str]]] = [
    ("public types, empty package markers", ["types", "ablate", "data"]),
    ("settings and parts", ["recipe", "evaluation"]),
    ("model, optimizers, data, export stack", ["model", "optim", "exporter", "data.tokens", "data.caseops"]),
    (
        "data building, catalog",
        ["data.check", "data.build", "hookspecs"],
    ),  # fmt: skip
    ("data sources", ["data.fineweb"]),
    ("plugin system", ["registry"]),
    ("run records", ["records"]),
    ("the run", ["run"]),
    ("kit, ablate", ["testing", "authoring", "ablate.stats", "ablate.plan", "ablate.execute"]),
    ("front ends", ["ablate.report", "ablate.cli"]),
    ("CLI and the package", ["cli", "__init__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The core modules `path` imports, anywhere in the file (`from pgolf_core import records` imports `records`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf_core":
            base = node.module.removeprefix("pgolf_core").lstrip(".")
            names = [f"{base}.{a.name}".lstrip(".") for a in node.names]
            # `from pgolf_core import records` imports a module; `from pgolf_core import Plugin` the package facade
            names.append(base or ("__init__" if any(n not in modules for n in names) else ""))
        elif isinstance(node, ast.Import):
            names = [
                a.name.removeprefix("pgolf_core").lstrip(".") for a in node.names if a.name.startswith("pgolf_core")
            ]
        found.update(n for n in names if n in modules)
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    modules = set(files) | {"__init__"}
    return {name: imports_of(path, modules) for name, path in files.items()}


def test_every_module_has_a_layer():
    placed = [m for _, mods in LAYERS for m in mods]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert sorted(set(graph()) - set(placed)) == [], "new core modules: give them a layer here and in the docs"
    assert sorted(set(placed) - set(graph())) == [], "modules that no longer exist"


def test_no_import_reaches_up_a_layer():
    layer = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    upward = [
        f"{m} ({LAYERS[layer[m]][0]}) imports {d} ({LAYERS[layer[d]][0]})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer[d] > layer[m]
    ]
    assert upward == []


def test_the_public_types_import_nothing_from_pgolf():
    assert graph()["types"] == set()


def test_no_import_cycle():
    edges = {m: set(deps) for m, deps in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(d) :], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_function_level_and_type_only_imports(tmp_path):
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pgolf_core.run import Run\n"
    source += "def f():\n    from pgolf_core import registry\n"
    (tmp_path / "mod.py").write_text(source)
    global CORE
    saved, CORE = CORE, tmp_path
    try:
        assert imports_of(tmp_path / "mod.py", {"run", "registry", "mod"}) == {"run", "registry"}
    finally:
        CORE = saved
