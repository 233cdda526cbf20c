"""The house's import graph: layers import downward only, and no module imports itself back.

Layers, bottom to top: ``common`` (errors, environment helpers, parsers) <- ``profiling`` <-
``tuning`` <- ``placement`` <- ``app`` <- ``boute`` (the command line). Every import counts,
also those inside functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("common", "profiling", "tuning", "placement", "app", "boute")
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the six packages."""
    out: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported first-party module, line) of every import statement in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:        # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path):
            if target.split(".")[0] in RANK and target != name:
                # `import a.b.c` runs a, a.b and a.b.c; the graph keeps the deepest module known.
                while target not in MODULES and "." in target:
                    target = target.rpartition(".")[0]
                graph[name].add(target)
    return graph


def test_layers_import_downward_only() -> None:
    wrong = []
    for name, path in MODULES.items():
        own = RANK[name.split(".")[0]]
        for target, line in _imports(name, path):
            top = target.split(".")[0]
            if top in RANK and RANK[top] > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_nothing_imports_the_command_line() -> None:
    """`boute.cli` assembles the commands; the command modules import only `boute._shared`."""
    wrong = []
    for name, path in MODULES.items():
        for target, line in _imports(name, path):
            if target == "boute.cli" or (target.startswith("boute.") and target.endswith("_cli")
                                         and name != "boute.cli"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


PRIVATE_ALLOWED = {
    # The DP's scaling benchmark counts the DP runs of a front by wrapping the level solver
    # in its own module (exact_front looks it up there at each call): instrumentation of an
    # internal, not a use of it.
    ("benchmarks/exact_scaling.py", "tuning._exact"),
}


def _private_imports(path: Path) -> Iterator[tuple[str, int]]:
    """(``pkg._module``, line) of every absolute import of a package's private module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module
                 and not node.level else [])
        for name in names:
            parts = name.split(".")
            if (parts[0] in RANK and len(parts) > 1 and parts[1].startswith("_")
                    and not parts[1].startswith("__")):
                yield ".".join(parts[:2]), node.lineno


def _private_violations(files: list[tuple[Path, Path]]) -> list[str]:
    """Imports of ``pkg._x`` from outside ``pkg`` (its own tests, ``tests/pkg/``, may).

    `files`: (path relative to the repository, file to read).
    """
    wrong = []
    for rel, path in files:
        owner = rel.parts[1] if rel.parts[0] == "tests" and len(rel.parts) > 2 else rel.parts[0]
        for target, line in _private_imports(path):
            package = target.split(".")[0]
            if package != owner and (rel.as_posix(), target) not in PRIVATE_ALLOWED:
                wrong.append(f"{rel}:{line} imports {target}")
    return wrong


def test_private_modules_stay_inside_their_package() -> None:
    """Callers use a package's facade: no ``from <pkg>._x`` outside ``<pkg>``.

    The packages, the benchmarks and the tests are checked; a package's own tests
    (``tests/<pkg>/``) may import its private modules, as they test its internals.
    """
    files = [(p.relative_to(ROOT), p) for d in (*LAYERS, "benchmarks", "tests")
             for p in sorted((ROOT / d).rglob("*.py"))]
    wrong = _private_violations(files)
    assert not wrong, "private modules imported from outside their package:\n" + "\n".join(wrong)


def test_the_private_import_check_sees_one(tmp_path: Path) -> None:
    """The checker itself: private imports from elsewhere are caught, a package's own tests pass."""
    probe = tmp_path / "probe.py"
    probe.write_text("from tuning._headroom import hold\nfrom tuning import search\n")
    assert _private_violations([(Path("benchmarks/probe.py"), probe),
                                (Path("tests/app/test_probe.py"), probe),
                                (Path("tests/tuning/test_probe.py"), probe)]) == [
        "benchmarks/probe.py:1 imports tuning._headroom",
        "tests/app/test_probe.py:1 imports tuning._headroom"]


def test_predicting_never_imports_measuring() -> None:
    """`profiling.measure` reads `profiling`; no other module of `profiling` reads it."""
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for name, path in MODULES.items()
             if name.startswith("profiling") and not name.startswith("profiling.measure")
             for target, line in _imports(name, path)
             if target.startswith("profiling.measure")]
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a list of modules, first == last), or None (iterative DFS)."""
    state: dict[str, int] = {}          # 1: on the stack, 2: done
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(child):], child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_no_import_cycles() -> None:
    """A package's ``__init__`` may import its submodules; nothing may import back into a cycle."""
    cycle = _cycle(_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checker itself: a hand-made cycle is found, a DAG passes."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert "boute.cli" in MODULES and "common.errors" in MODULES and "app.ingress" in MODULES


@pytest.mark.parametrize("package", LAYERS)
def test_every_package_is_seen(package: str) -> None:
    assert any(name == package or name.startswith(package + ".") for name in MODULES)
