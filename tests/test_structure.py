"""The code's structure as rules: who may import what, no import cycles, and contracts written down.

Read from the source with `ast` (nothing is imported), so a rule holds for code paths no test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each part of the kr namespace lives in the checkout (pyproject.toml maps the same folders)
PACKAGES = {"kr": ROOT / "src" / "kr", "kr.components": ROOT / "components", "kr.pipelines": ROOT / "pipelines"}
# the method and its checks: pure ML and data code, runnable and testable with no orchestrator and no tracking
NO_KFP_NO_MLFLOW = ("kr.method", "kr.privacy", "kr.validation", "kr.data", "kr.config", "kr.runtime", "kr.plots")
# what the orchestration layers may import from the library: its public step API and nothing else
STEP_API = ("kr.steps",)
MIN_DOCSTRING_COVERAGE = 0.90


def modules() -> dict[str, Path]:
    """Every module of the kr namespace, by dotted name."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "kr" and name.startswith(("kr.components", "kr.pipelines")):
                continue
            found[name] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Absolute names a module imports (relative imports resolved against its package), at any depth."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_method_imports_neither_kfp_nor_mlflow() -> None:
    bad = {
        name: sorted(i for i in imports(path, name) if _within(i, ("kfp", "mlflow")))
        for name, path in modules().items()
        if _within(name, NO_KFP_NO_MLFLOW)
    }
    assert not {k: v for k, v in bad.items() if v}


def test_components_and_pipelines_use_only_the_public_step_api() -> None:
    bad = {}
    for name, path in modules().items():
        if not _within(name, ("kr.components", "kr.pipelines")):
            continue
        library = {
            i for i in imports(path, name) if _within(i, ("kr",)) and not _within(i, ("kr.components", "kr.pipelines"))
        }
        outside = sorted(i for i in library if not _within(i, STEP_API) and i != "kr")
        if outside:
            bad[name] = outside
    assert not bad, f"import these through kr.steps instead: {bad}"


def test_no_import_cycles() -> None:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for i in imports(path, name):
            # `from kr.x import y` may name a module kr.x.y or an attribute of kr.x: keep the longest module
            while i and i not in mods:
                i = i.rpartition(".")[0]
            if i and i != name:
                targets.add(i)
        graph[name] = targets
    # a package's __init__ that re-exports its own modules is not a cycle of the design
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and mods[t].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def public_definitions() -> list[tuple[str, bool]]:
    """(qualified name, has a docstring) for every public module-level function and class, and every public method
    of a public class, in the kr namespace."""
    out: list[tuple[str, bool]] = []
    for name, path in modules().items():
        if any(part.startswith("_") for part in name.split(".")):
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            out.append((f"{name}.{node.name}", ast.get_docstring(node) is not None))
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and not item.name.startswith("_"):
                        out.append((f"{name}.{node.name}.{item.name}", ast.get_docstring(item) is not None))
    return out


def test_public_names_have_docstrings() -> None:
    found = public_definitions()
    missing = sorted(n for n, ok in found if not ok)
    coverage = 1 - len(missing) / len(found)
    assert coverage >= MIN_DOCSTRING_COVERAGE, (
        f"docstring coverage {coverage:.1%} of {len(found)} public names < {MIN_DOCSTRING_COVERAGE:.0%}; "
        f"missing: {', '.join(missing)}"
    )


def test_every_config_field_is_described() -> None:
    from kr import config

    missing = [
        f"{model.__name__}.{field}"
        for model in vars(config).values()
        if isinstance(model, type) and issubclass(model, config.Strict) and model is not config.Strict
        for field, info in model.model_fields.items()
        if not info.description
    ]
    assert not missing, f"config fields without a description: {', '.join(missing)}"


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages (the kr namespace spans three folders): a new one must be listed too, or
    `pip install .` and the images would ship without it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == found
