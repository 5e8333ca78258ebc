"""The layout's arrows point one way: no import cycle inside costmodel/, between its modules or
between its role packages, and costmodel never imports autotune. Every import counts, the lazy
ones inside functions included (a cycle hidden behind a lazy import is still a cycle); only
imports under `if TYPE_CHECKING:` (annotations) do not."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules `name` imports: `import a.b` and `from a.b import c` name a.b, or a.b.c when that
    is a module (importing a submodule is importing it, not its package's other contents)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules("costmodel")
    known = set(modules) | set(_modules("autotune"))
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more nodes (Tarjan), and self-loops."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


def _role(module: str) -> str:
    """costmodel.models.gnn -> costmodel.models; costmodel.cli -> costmodel.cli."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_role_packages():
    roles: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        roles.setdefault(_role(module), set()).update(
            _role(m) for m in imported if m.startswith("costmodel.") and _role(m) != _role(module))
    assert _cycles(roles) == [], roles


def test_costmodel_never_imports_autotune():
    offenders = {m: sorted(i for i in imported if i == "autotune" or i.startswith("autotune."))
                 for m, imported in _graph().items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_checker_sees_a_cycle_and_a_lazy_import(tmp_path):
    """The test above can fail: a lazy import that closes a loop is found."""
    graph = {"costmodel.a": {"costmodel.b"}, "costmodel.b": set()}
    source = tmp_path / "b.py"
    source.write_text("def f():\n    from costmodel import a\n")
    graph["costmodel.b"] = _imports(source, "costmodel.b", {"costmodel.a", "costmodel.b"})
    assert _cycles(graph) == [["costmodel.a", "costmodel.b"]]
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import costmodel.a\n")
    assert _imports(source, "costmodel.b", {"costmodel.a"}) == {"typing"}


@pytest.mark.parametrize("package", ["ir", "hardware", "models", "measure", "data", "kernels"])
def test_every_role_package_names_its_public_names(package):
    init = ROOT / "costmodel" / package / "__init__.py"
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"costmodel/{package}/__init__.py says what the package is for"
