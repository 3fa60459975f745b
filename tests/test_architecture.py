"""The package's shape, checked on its source (see docs/architecture.md):

* no import cycle between the modules of ``klustr_gpu``, counting every import, also those
  inside functions (a lazy import is still a dependency: base -> neighbours -> base was one);
* no module imports another module's underscore name (``from .pipeline import _items``, or
  ``P._ordered`` on an imported module): what another module needs is public. A module whose
  own name starts with an underscore (``reduce/_numba.py``) is private to its package: only
  its siblings import it;
* no module over 500 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "klustr_gpu"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, level: int, target: str | None) -> str:
    """The absolute name of a (relative) import in ``module``."""
    if not level:
        return target or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, name imported from it or None, line)`` for every import in ``module``
    (a ``from X import Y`` where ``X.Y`` is itself a module counts as importing ``X.Y``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, node.level, node.module)
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (src, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m == "klustr_gpu" or m.startswith("klustr_gpu.")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m):
            while target not in MODULES and "." in target:      # klustr_gpu.x.y where y is a name
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != m:
                graph[m].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_package_is_found():
    assert {"klustr_gpu", "klustr_gpu.api", "klustr_gpu.features.write", "klustr_gpu.reduce.validate"} <= set(MODULES)


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for m in MODULES:
        for target, name, line in _imports(m):
            where = f"{MODULES[m].relative_to(PACKAGE.parent)}:{line}"
            if name is not None and _private(name) and target != m:
                bad.append(f"{where} imports {name} from {target}")
            last = target.rsplit(".", 1)[-1]
            parent = target.rsplit(".", 1)[0]
            own_package = m if _is_package(m) else m.rsplit(".", 1)[0]
            if _private(last) and target in MODULES and parent != own_package:
                bad.append(f"{where} imports the private module {target}")
        bad += [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} uses {attr}" for attr, line in _private_attributes(m)]
    assert not bad, "\n".join(bad)


def _private_attributes(module: str) -> list[tuple[str, int]]:
    """``alias._name`` where ``alias`` is a klustr_gpu module imported into ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name) for a in node.names if a.name.startswith("klustr_gpu")}
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, node.level, node.module)
            aliases |= {(a.asname or a.name) for a in node.names if f"{src}.{a.name}" in MODULES}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            name = ast.unparse(base)
            if name in aliases:
                out.append((f"{name}.{node.attr}", node.lineno))
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_500_lines(module):
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{MODULES[module].relative_to(PACKAGE.parent)} has {n} lines (at most {MAX_LINES})"


def test_the_checks_catch_what_they_name():
    """The detectors themselves, on a made-up graph and names."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _private("_items") and not _private("__version__") and not _private("items")
    assert _resolve("klustr_gpu.features.run", 2, "config") == "klustr_gpu.config"
    assert _resolve("klustr_gpu.features", 1, "store") == "klustr_gpu.features.store"
