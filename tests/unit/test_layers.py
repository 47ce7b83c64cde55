"""The package's layering holds: which folders may import which, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"probewatch": REPO / "engine", "probewatch.kernels": REPO / "kernels"}
SURFACES = ("probewatch.serve", "probewatch.integrations", "probewatch.cli")
CORE_LAYERS = ("probewatch.detect", "probewatch.campaigns", "probewatch.backend", "probewatch.io", "probewatch.kernels")


def module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise ValueError(path)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, at any depth (lazy imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


SOURCES = sorted(p for folder in PACKAGE_DIRS.values() for p in folder.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_of_the_package_imports_the_benchmark(path):
    assert not [m for m in imported_modules(path) if m == "bench" or m.startswith("bench.")]


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if module_name(p).startswith(CORE_LAYERS)], ids=lambda p: str(p.relative_to(REPO))
)
def test_core_layers_never_import_a_surface(path):
    assert not [m for m in imported_modules(path) if m.startswith(SURFACES)]


def test_kernels_stand_alone():
    for path in (REPO / "kernels").rglob("*.py"):
        outside = [
            m
            for m in imported_modules(path)
            if m.startswith("probewatch") and not m.startswith(("probewatch.kernels", "probewatch.errors"))
        ]
        assert not outside, (path.name, outside)


def test_the_walk_finds_relative_imports():
    # the checker itself: a known relative import of the pipeline is seen with its absolute name
    assert "probewatch.detect.stream.FeatureStream" in imported_modules(REPO / "engine" / "detect" / "pipeline.py")
