"""The package layout's promises: registries fill themselves, the library never imports the CLI, and no
two modules (or subpackages) import each other, even lazily inside a function."""
import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(fold_to_subpackage: bool) -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in SRC.rglob("*.py")}
    fold = (lambda m: ".".join(m.split(".")[:2])) if fold_to_subpackage else (lambda m: m)
    graph: dict[str, set[str]] = {fold(m): set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and not m.startswith(t + ".") and fold(t) != fold(m):
                    graph[fold(m)].add(fold(t))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each node that can reach itself, with the path found (depth-first)."""
    found = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.append(path + [start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def test_no_import_cycles_between_modules_or_subpackages():
    assert cycles(import_graph(False)) == []
    assert cycles(import_graph(True)) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                        ["c", "a", "b", "c"]]


def lazy_kdx_imports(tree: ast.Module) -> list[int]:
    """The lines of `from kdx... import` and `import kdx...` inside a function."""
    lines = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "kdx" \
                        or isinstance(node, ast.Import) and any(a.name.split(".")[0] == "kdx" for a in node.names):
                    lines.add(node.lineno)
    return sorted(lines)


def test_the_library_imports_kdx_at_module_tops():
    """A module's kdx dependencies stand at its top. Not checked: the CLI, which imports the library on use,
    and kdx/__init__.py, which loads the Python API on first use (so `kdx --help` does not pay for it)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[:2] == ("kdx", "cli") or rel == Path("kdx/__init__.py"):
            continue
        offenders += [f"{rel}:{line}" for line in lazy_kdx_imports(ast.parse(path.read_text()))]
    assert offenders == []


def test_the_lazy_import_check_can_fail():
    code = "import os\nfrom kdx import io\ndef f():\n    import numpy\n    from kdx.io import write_json\n" \
           "    def g():\n        import kdx.data\n"
    assert lazy_kdx_imports(ast.parse(code)) == [5, 7]


def test_no_library_module_imports_the_cli():
    graph = import_graph(False)
    offenders = [m for m, targets in graph.items() if m not in ("kdx.__main__",) and not m.startswith("kdx.cli") and any(
        t.startswith("kdx.cli") for t in targets)]
    assert offenders == []


def test_importing_a_subpackage_registers_its_entries_without_the_cli():
    code = ("import sys, kdx.sampling; from kdx.registry import SOURCES, ALL; "
            "print(len(SOURCES._entries), 'kdx.cli' in sys.modules, 'typer' in sys.modules); "
            "print(all(len(r.names()) > 0 for r in ALL.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 8 and out[1:] == ["False", "False", "True"]
