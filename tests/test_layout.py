"""The house plan, enforced: packages by concern whose imports point only downward, no import
cycles (imports inside functions count), no private name imported across modules, and one
exception tree."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import monitor.errors as errors

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import its own package and anything in a lower layer
LAYERS = [
    {"kernels"},
    {"feeds"},
    {"monitor", "monitor.errors", "monitor.settings"},
    {"monitor.book"},
    {"monitor.core"},
    {"monitor.adapters"},
    {"monitor.desk"},
    {"monitor.web"},
    {"monitor.reports", "monitor.liquidator"},
    {"monitor.app"},
    {"monitor.perf"},
    {"monitor.cli", "monitor.__main__"},
]
LAYER_OF = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("kernels", "feeds", "monitor"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[0] if parts[0] != "monitor" else ".".join(parts[:2])


def _imports(path: Path):
    """(imported module, names, line) of every import in the file, at any depth."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            yield base, [a.name for a in node.names], node.lineno


def _own(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_package_sits_in_a_layer():
    assert {_package(m) for m in MODULES} <= set(LAYER_OF)


def test_imports_point_only_downward():
    bad = []
    for mod, path in MODULES.items():
        here = LAYER_OF[_package(mod)]
        for target, _, line in _imports(path):
            own = _own(target)
            if own is None or _package(own) == _package(mod):
                continue
            if LAYER_OF[_package(own)] > here:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} (upward)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in _imports(path):
            for t in [target, *(f"{target}.{n}" for n in names)]:
                own = _own(t)
                if own and own != mod:
                    edges[mod].add(own)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in edges[m]:
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m)


def test_no_private_name_imported_across_modules():
    files = [*MODULES.values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    bad = [f"{p.relative_to(ROOT)}:{line}: {target}.{n}" for p in files
           for target, names, line in _imports(p) for n in names
           if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_tests_mirror_the_source_tree():
    """tests/<package>/ for every package that has tests; none for a package that does not
    exist (a test left behind by a move)."""
    packages = {p.name for p in (ROOT / "monitor").iterdir() if (p / "__init__.py").exists()}
    packages |= {"kernels", "feeds"}
    for d in (ROOT / "tests").iterdir():
        if d.is_dir() and d.name not in ("data", "__pycache__"):
            assert d.name in packages, f"tests/{d.name}/ mirrors no source package"


def test_every_exception_class_is_in_the_one_tree():
    mine = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, errors.MonitorError)}
    assert {"MonitorError", "InputError", "BookError", "AccountEventError", "ConfigError"} <= mine
    for name in mine:
        assert name in (errors.__doc__ or ""), f"{name} missing from the tree in the docstring"
    defined_elsewhere = []
    for mod, path in MODULES.items():
        if mod == "monitor.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                defined_elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not defined_elsewhere, "\n".join(defined_elsewhere)
